"""Pretraining: the teacher-student recipes on Lightning, their data and augmentations.

Builds on ``pretrain.model``; never imported by the inference code.
"""
