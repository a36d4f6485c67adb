"""Test package (lets tests/conftest.py import tests.fixtures_pipelines)."""
