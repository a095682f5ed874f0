"""The ``tfrec`` command line interface."""
