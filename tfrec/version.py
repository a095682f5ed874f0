"""The package version, kept in one place for setup.py and the CLI."""
__version__ = "0.1.0.dev0"
