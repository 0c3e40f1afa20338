"""The ``emoreg`` command line."""
