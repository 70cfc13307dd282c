"""Shared fixtures: one mock upstream and one bridge per module, fresh upstream state per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Mitmdump, Upstream, start_mitmdump, start_upstream


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def upstream(module_tmp: Path) -> Iterator[Upstream]:
    up = start_upstream(module_tmp)
    yield up
    up.stop()


@pytest.fixture(scope="module")
def bridge(module_tmp: Path, upstream: Upstream) -> Iterator[Mitmdump]:
    proxy = start_mitmdump(module_tmp, upstream.url)
    yield proxy
    proxy.stop()


@pytest.fixture(autouse=True)
def _fresh_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()
