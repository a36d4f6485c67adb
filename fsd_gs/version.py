"""The package's version (the same string as pyproject.toml's ``version``; report.json records it)."""

__version__ = "0.1.0"
