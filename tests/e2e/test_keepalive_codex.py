"""Long silent turns with the real Codex CLI: behind a real nginx, past Codex's own idle timer, and in
passthrough and auto mode against an upstream that speaks the WebSocket mode itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from support.codex import Codex, CodexRun
from support.mitmdump import start_mitmdump
from support.nginx import start_nginx
from support.upstream import Upstream

pytestmark = pytest.mark.codex

# Twice nginx's proxy_read_timeout below: without pings nginx closes the silent connection halfway through.
SILENT_TURN = "[[sleep:6]] take your time"


@dataclass
class SilentRun:
    result: CodexRun
    elapsed: float
    bridge_log: str


def behind_nginx(tmp: Path, upstream: Upstream, interval: int) -> SilentRun:
    proxy = start_mitmdump(tmp, upstream.url, f"codexbridge_ping_interval={interval}", "codexbridge_ping_timeout=1")
    nginx = start_nginx(tmp, proxy.port, "proxy_read_timeout 3s;")
    codex = Codex.make(tmp)
    try:
        codex.configure(f"http://127.0.0.1:{nginx.port}/v1", websockets=True, provider={"stream_max_retries": 0})
        t0 = time.monotonic()
        result = codex.exec(SILENT_TURN, timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        nginx.stop()
        proxy.stop()
    return SilentRun(result, elapsed, proxy.log)


def slow_thinker(tmp: Path, upstream: Upstream, keepalive: int) -> SilentRun:
    options = [f"codexbridge_text_keepalive={keepalive}"] if keepalive else []
    proxy = start_mitmdump(tmp, upstream.url, *options)
    codex = Codex.make(tmp)
    try:
        codex.configure(proxy.base_url, websockets=True,
                        provider={"stream_idle_timeout_ms": 2500, "stream_max_retries": 0})
        t0 = time.monotonic()
        result = codex.exec("[[sleep:5]] slow thinker", timeout=90)  # twice the idle timeout
        elapsed = time.monotonic() - t0
    finally:
        proxy.stop()
    return SilentRun(result, elapsed, proxy.log)


@pytest.fixture(scope="module")
def silent_runs(module_tmp: Path, upstream: Upstream) -> dict[str, SilentRun]:
    """The long silent turns below, all at the same time: each with a bridge, a Codex home (and nginx) of its own;
    none of them asks the shared upstream what it saw."""
    jobs: dict[str, Callable[[], SilentRun]] = {
        "nginx-2": partial(behind_nginx, module_tmp, upstream, 2),
        "nginx-0": partial(behind_nginx, module_tmp, upstream, 0),
        "keepalive-1": partial(slow_thinker, module_tmp, upstream, 1),
        "keepalive-0": partial(slow_thinker, module_tmp, upstream, 0),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize(("interval", "succeeds"), [(2, True), (0, False)], ids=["pings-on", "pings-off"])
def test_silent_turn_behind_nginx_with_short_read_timeout(silent_runs: dict[str, SilentRun], interval: int,
                                                          succeeds: bool) -> None:
    run = silent_runs[f"nginx-{interval}"]
    result = run.result
    if succeeds:
        assert result.returncode == 0, result.stderr
        assert "hi from mock" in result.stdout
        assert run.elapsed >= 6
        assert "stage=downstream_ping_ok" in run.bridge_log
    else:
        assert result.returncode != 0
        assert "hi from mock" not in result.stdout
        assert "stream disconnected before completion" in result.stderr or "closed" in result.stderr, result.stderr


@pytest.mark.parametrize(("keepalive", "succeeds"), [(1, True), (0, False)], ids=["text-keepalive", "default-off"])
def test_text_keepalive_beats_codex_idle_timeout(silent_runs: dict[str, SilentRun], keepalive: int,
                                                 succeeds: bool) -> None:
    run = silent_runs[f"keepalive-{keepalive}"]
    result = run.result
    if succeeds:
        assert result.returncode == 0, result.stderr
        assert "hi from mock" in result.stdout
        assert "\"keepalive\"" not in result.stdout + result.stderr, "the keepalive frame must be invisible"
        assert "unhandled" not in result.stdout + result.stderr
        assert "stage=text_keepalive" in run.bridge_log
    else:
        assert result.returncode != 0
        assert "idle timeout" in result.stderr, result.stderr
        assert "stage=text_keepalive" not in run.bridge_log


def test_passthrough_mode_with_codex(codex: Codex, ws_upstream: Upstream, module_tmp: Path) -> None:
    ws_upstream.reset()
    proxy = start_mitmdump(module_tmp, ws_upstream.url, "codexbridge_mode=passthrough")
    try:
        codex.configure(proxy.base_url, websockets=True)
        result = codex.exec("run echo")
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stderr
    assert "tool said: hello-from-tool" in result.stdout
    methods = [r["method"] for r in ws_upstream.requests()]
    assert methods and set(methods) == {"WS"}, methods
    assert ws_upstream.stats()["ws_connections"] >= 1


@pytest.mark.parametrize("upstream_kind", ["websocket", "sse-only"])
def test_auto_mode_with_codex(codex: Codex, ws_upstream: Upstream, upstream: Upstream, module_tmp: Path,
                              upstream_kind: str) -> None:
    target = ws_upstream if upstream_kind == "websocket" else upstream
    target.reset()
    proxy = start_mitmdump(module_tmp, target.url, "codexbridge_mode=auto")
    try:
        codex.configure(proxy.base_url, websockets=True)
        first = codex.exec("say hi")
        second = codex.exec("say hi")
    finally:
        proxy.stop()
    for result in (first, second):
        assert result.returncode == 0, result.stderr
        assert "hi from mock" in result.stdout
    stats = target.stats()
    methods = [r["method"] for r in target.requests()]
    if upstream_kind == "websocket":
        assert set(methods) == {"WS"}
        assert stats["ws_connections"] == 2
    else:
        assert stats["upgrade_attempts"] == 1, "the refusal is remembered: one probe, then bridged"
        assert set(methods) == {"POST"} and len(methods) == 2
        assert "Falling back" not in first.stderr + second.stderr
    assert "stage=auto_probe" in proxy.log
