"""Helpers shared by the tests of several areas (import as `tests.helpers.<module>`)."""
