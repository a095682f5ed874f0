"""The package version, kept in one place for setup.py and the CLI."""
__version__ = "0.2.0"
