"""The suite version: one place, read by pyproject.toml (setuptools dynamic) and the code."""
__version__ = "0.4.0"
