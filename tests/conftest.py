"""Shared test setup: test modules import helpers as ``tests.<module>`` (tests is a package)."""
