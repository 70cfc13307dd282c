"""A pytest plugin that serves recorded Responses sessions to tests, with record modes (loaded by pytest only)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Imported when first used: pytest loads the plugin in every run of a project that has codexbridge installed.
_EXPORTS = {
    "Cassette": "codexbridge.testing.cassette",
    "Divergence": "codexbridge.testing.matching",
    "Matcher": "codexbridge.testing.matching",
    "RECORD_MODES": "codexbridge.testing.modes",
    "RecordMode": "codexbridge.testing.modes",
    "RecordedRequest": "codexbridge.testing.scrub",
    "RecordedResponse": "codexbridge.testing.scrub",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'codexbridge.testing' has no attribute {name!r}")
