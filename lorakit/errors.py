"""Errors a user can act on.

Every error that reaches the user names where the problem is (file, key), what is
wrong and how to fix it. The CLI maps :class:`UserError` to exit code 2 and any
other exception to exit code 1.
"""
from __future__ import annotations

import difflib
from typing import Iterable, Optional


class UserError(Exception):
    """Bad config or bad input: the CLI prints it and exits with 2."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 fix: str | None = None):
        self.message = message
        self.file = None if file is None else str(file)
        self.key = key
        self.fix = fix
        super().__init__(self.format())

    def format(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.key:
            where.append(f"key '{self.key}'")
        head = ": ".join([", ".join(where), self.message]) if where else self.message
        return head + (f"\n  fix: {self.fix}" if self.fix else "")


class ConfigError(UserError):
    """A config value is unknown, of the wrong type, out of range or contradictory."""


class DataError(UserError):
    """The dataset (folders, images, captions) cannot be used as given."""


class ModelError(UserError):
    """The model path is not a Stable Diffusion checkpoint lorakit can load."""


def closest(name: str, known: Iterable[str]) -> Optional[str]:
    """The known name closest to `name` (case-insensitive), for a "did you mean"; None if none is close."""
    by_lower = {k.lower(): k for k in known}
    match = difflib.get_close_matches(str(name).strip().lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None
