"""Errors users see: each names the field or file at fault and says what to do."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the CLI prints it without a traceback (exit code 2)."""

    exit_code = 2


class ConfigError(UserError):
    """A config value is wrong. `field` is the dotted key as the user wrote it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config '{field}': {message}")


class DatasetError(UserError):
    """The dataset cannot be used (empty, unreadable, bad metadata.csv line, ...)."""


class ModelLoadError(UserError):
    """The base model (or a part it needs: tokenizer, config) cannot be loaded."""
