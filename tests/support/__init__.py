"""Shared helpers of the unit and end-to-end tests: where things are, the CI rule for missing parts, polling."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def wait_for(pred: Callable[[], object], timeout: float) -> bool:
    """Polls a condition from async test code."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return False


def need(what: str, available: bool) -> None:
    """Skips a test whose real component is missing, except in CI, where that is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} is not available")
