"""User-facing configuration errors."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """A bad configuration value; `probdml.main` prints its message on one line and exits 2."""


def unknown_choice(kind: str, name: str, valid: Iterable[str]) -> ConfigError:
    """ConfigError for an unknown registry name, listing the valid choices."""
    return ConfigError(f"unknown {kind} {name!r}; valid choices: {', '.join(sorted(valid))}")
