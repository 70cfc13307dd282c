"""Fixtures for every test; the `support` package is importable through pytest's `pythonpath` (pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One temporary folder for everything a test module starts once (upstreams, bridges)."""
    return tmp_path_factory.mktemp("e2e")
