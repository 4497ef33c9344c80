"""Inference: the ATST models, their front end, feature protocols and checkpoint reading.

Nothing here imports the training code or Lightning; ``atst_hear`` and ``atst_upstream``
need only this package.
"""
