"""Process fixtures: one mock upstream (fresh state per test), one bridge and one WebSocket upstream per module, one
fresh install of the wheel per session (made in the background from the first end-to-end test on)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from support.codex import Codex
from support.fresh_install import FreshInstall, install_wheel
from support.mitmdump import Mitmdump, start_mitmdump
from support.upstream import Upstream, start_upstream


@pytest.fixture(scope="module")
def upstream(module_tmp: Path) -> Iterator[Upstream]:
    """The SSE-only mock upstream (405 to WebSocket upgrades)."""
    up = start_upstream(module_tmp)
    yield up
    up.stop()


@pytest.fixture(scope="module")
def ws_upstream(module_tmp: Path) -> Iterator[Upstream]:
    """The mock upstream that also speaks the Responses WebSocket mode itself."""
    up = start_upstream(module_tmp, "--websocket")
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


@pytest.fixture(scope="session", autouse=True)
def _fresh_install_early(request: pytest.FixtureRequest,
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future[FreshInstall] | None]:
    """Starts the fresh install with the first end-to-end test when the session has a test that needs it: it
    builds and installs in the background (about half a minute) while the tests before that one run."""
    if not any("fresh_install" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(install_wheel, tmp_path_factory.mktemp("fresh-install"))


@pytest.fixture(scope="session")
def fresh_install(_fresh_install_early: Future[FreshInstall] | None,
                  tmp_path_factory: pytest.TempPathFactory) -> FreshInstall:
    """codexbridge's wheel installed into a new venv outside the checkout, once per test session."""
    if _fresh_install_early is None:
        return install_wheel(tmp_path_factory.mktemp("fresh-install"))
    return _fresh_install_early.result()


@pytest.fixture
def codex(tmp_path: Path) -> Codex:
    """The real Codex CLI with a CODEX_HOME of its own (skipped without it, failed under CI=true)."""
    return Codex.make(tmp_path)
