"""Clean failures of the command line: one clear line and a non-zero exit, no success banner, and no child process
left behind by `codexbridge run`, `cluster` or `bench` on any way out (found through /proc by a marker in their
environment, so that an orphan adopted by init still counts)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from codexbridge.recording.schema import load
from codexbridge.tools.procs import free_port, wait_for_port
from support import BIN, ROOT
from support.mitmdump import start_mitmdump
from support.rawws import RawWebSocket
from support.turns import turn
from support.upstream import Upstream


def marked(marker: str) -> list[int]:
    """Every process whose environment carries the marker (the CLI's children and theirs, orphaned or not)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def gone(marker: str, timeout: float = 10.0) -> list[int]:
    """The marked processes still alive after `timeout` seconds (zombies of ours are reaped first)."""
    deadline = time.monotonic() + timeout
    while (left := marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture
def marker() -> Iterator[str]:
    mark = f"CODEXBRIDGE_TEST_MARK={uuid.uuid4().hex}"
    yield mark
    for pid in marked(mark):  # never leave one behind, even when the test failed
        os.kill(pid, signal.SIGKILL)


def cli(marker: str, *args: str, python: list[str] | None = None) -> subprocess.Popen[str]:
    name, value = marker.split("=", 1)
    env = {**os.environ, name: value, "COLUMNS": "200"}
    return subprocess.Popen([*(python or [str(BIN / "codexbridge")]), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def finished(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def one_line_failure(code: int, out: str, err: str, needle: str) -> None:
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert "listening on" not in out + err


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_run_on_a_port_in_use_fails_in_one_line_and_leaves_nothing(marker: str, taken_port: int) -> None:
    code, out, err = finished(cli(marker, "run", "--port", str(taken_port)))
    one_line_failure(code, out, err, f"127.0.0.1:{taken_port} is already in use")
    assert gone(marker) == []


@pytest.mark.parametrize("url", ["gateway.example", "ftp://gateway.example", "http://gateway.example:99999", "http://"])
def test_run_with_a_bad_upstream_url_fails_in_one_line(marker: str, url: str) -> None:
    code, out, err = finished(cli(marker, "run", "--upstream", url, "--port", str(free_port())))
    one_line_failure(code, out, err, "--upstream")
    assert gone(marker) == []


def test_run_with_a_missing_dependency_fails_in_one_line(marker: str) -> None:
    python = [sys.executable, "-c", "import sys; sys.modules['prometheus_client'] = None; "
              "from codexbridge.tools.cli import main; sys.exit(main(sys.argv[1:]))"]
    code, out, err = finished(cli(marker, "run", "--port", str(free_port()), python=python))
    one_line_failure(code, out, err, "a dependency is missing")
    assert "prometheus_client" in err
    assert gone(marker) == []


def test_run_with_a_metrics_port_in_use_fails_before_starting_anything(marker: str, taken_port: int) -> None:
    code, out, err = finished(cli(marker, "run", "--port", str(free_port()), "--set",
                                  f"codexbridge_metrics=127.0.0.1:{taken_port}"))
    one_line_failure(code, out, err, "metrics address")
    assert gone(marker) == []


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_run_stopped_by_a_signal_leaves_no_child(marker: str, how: signal.Signals) -> None:
    port = free_port()
    proc = cli(marker, "run", "--port", str(port), "-q")
    try:
        assert wait_for_port("127.0.0.1", port, timeout=30), proc.stderr.read() if proc.stderr else ""
        children = marked(marker)
        assert len(children) >= 3, children  # the CLI, the demo upstream, mitmdump
        proc.send_signal(how)
        proc.communicate(timeout=30)
        assert gone(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_run_whose_mitmdump_dies_stops_and_leaves_no_child(marker: str) -> None:
    port = free_port()
    proc = cli(marker, "run", "--port", str(port), "-q")
    try:
        assert wait_for_port("127.0.0.1", port, timeout=30)
        mitmdump = [pid for pid in marked(marker) if b"mitmdump" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert mitmdump
        os.kill(mitmdump[0], signal.SIGKILL)
        code, _, err = finished(proc, 30)
        # killed while `run` still waits for it to start, or after: either way one line, not a banner
        assert code != 0 and ("mitmdump exited" in err or "mitmdump did not start" in err), err
        assert gone(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cluster_on_a_port_in_use_fails_in_one_line_and_leaves_nothing(marker: str, taken_port: int) -> None:
    code, out, err = finished(cli(marker, "cluster", "--workers", "1", "--port", str(taken_port)))
    one_line_failure(code, out, err, "already in use")
    assert gone(marker) == []


def test_bench_stopped_by_sigterm_leaves_no_child(marker: str, tmp_path: Path) -> None:
    # (idle holds its sessions for seconds: the bench is still at work when the signal comes)
    proc = cli(marker, "bench", "--quick", "--only", "c", "--workloads", "idle", "--json", str(tmp_path / "b.json"))
    try:
        deadline = time.monotonic() + 60
        seen = 0
        while seen < 3 and time.monotonic() < deadline:  # the bench, its upstream, its mitmdump
            seen = len(marked(marker))
            time.sleep(0.1)
        assert seen >= 3
        proc.send_signal(signal.SIGTERM)
        code, _, _ = finished(proc, 60)
        assert code != 0
        assert gone(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_ends_open_recordings_quietly_and_marks_them(tmp_path: Path, upstream: Upstream) -> None:
    rec_dir = tmp_path / "rec"
    proxy = start_mitmdump(tmp_path, upstream.url, f"codexbridge_record={rec_dir}")

    async def go() -> None:
        ws = await RawWebSocket.connect(proxy.port)
        await turn(ws, "hello")
        proxy.proc.send_signal(signal.SIGTERM)  # the session is still open
        proxy.proc.wait(timeout=15)
        ws.abort()

    try:
        asyncio.run(go())
    finally:
        proxy.stop()
    assert "Exception ignored" not in proxy.log and "Bad file descriptor" not in proxy.log, proxy.log
    (recording,) = rec_dir.glob("*.jsonl")
    rec = load(str(recording))
    assert rec.complete and rec.ended_by_shutdown


def test_demo_upstream_subcommand_takes_the_readme_flags(marker: str, tmp_path: Path) -> None:
    port = free_port()
    proc = cli(marker, "demo-upstream", "--port", str(port), "--websocket")
    try:
        assert wait_for_port("127.0.0.1", port, timeout=20)

        async def go() -> list[str]:
            ws = await RawWebSocket.connect(port)  # --websocket: the demo upstream speaks the WebSocket mode
            frames = await turn(ws, "hello")
            await ws.close()
            return frames

        assert asyncio.run(go())[-1].startswith('{"type":"response.completed"')
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    code, out, err = finished(cli(marker, "demo-upstream", "--port", str(free_port()), "--tls-key", "k.pem"))
    one_line_failure(code, out, err, "--tls-key needs --tls-cert")
    assert gone(marker) == []
