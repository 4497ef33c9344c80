"""What the tests share besides pytest fixtures (``tests/conftest.py``): files made as the real ones
are, subprocess runs of the command line, harness data, numeric helpers. Imported as
``tests.support.<module>``."""
