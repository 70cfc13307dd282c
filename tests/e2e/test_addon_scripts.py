"""The entry scripts, each alone and together: keepalive.py, record.py and bridge.py with real clients and Codex."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from codexbridge.recording.schema import ClientFrame, Ping, ServerFrame, UpstreamRequest, load
from codexbridge.tools.procs import free_port, mitmdump_command, script_path
from support import BIN, ROOT
from support.codex import Codex, record_codex_echo
from support.mitmdump import TEST_OPTIONS, Mitmdump, start_mitmdump
from support.processes import start_process
from support.rawws import RawWebSocket
from support.turns import turn
from support.upstream import Upstream, start_replay_server

KEEPALIVE = {"codexbridge_path", "codexbridge_flow_messages", "codexbridge_ping_interval", "codexbridge_ping_timeout", "codexbridge_text_keepalive",
             "codexbridge_on_disconnect", "codexbridge_message_hook"}
RECORDER = {"codexbridge_path", "codexbridge_flow_messages", "codexbridge_record", "codexbridge_record_redact", "codexbridge_record_elide"}
METRICS = {"codexbridge_path", "codexbridge_flow_messages", "codexbridge_metrics"}
BRIDGE = {"codexbridge_path", "codexbridge_flow_messages", "codexbridge_on_disconnect", "codexbridge_message_hook", "codexbridge_mode",
          "codexbridge_max_frame_bytes", "codexbridge_connect_timeout", "codexbridge_read_timeout",
          "codexbridge_max_stored_responses", "codexbridge_auto_ttl", "codexbridge_max_stored_bytes",
          "codexbridge_max_lanes", "codexbridge_max_active", "codexbridge_max_queued", "codexbridge_gc_tuning",
          "codexbridge_stream_sse", "codexbridge_upgrade_headers", "codexbridge_fast_path"}
# Per-run values in the demo upstream's events: its response counter, random item ids, its clock.
_VOLATILE = re.compile(r'resp_mock_\d+|(?:msg|fc|call)_[0-9a-f]+|"created_at":\d+')


def start_with_scripts(tmp: Path, upstream: str, scripts: tuple[str, ...], *options: str) -> Mitmdump:
    port = free_port()
    cmd = mitmdump_command(upstream, port, [*TEST_OPTIONS, *options], scripts=scripts)
    return Mitmdump(start_process(cmd, port, tmp / f"mitmdump-{port}.log").child, upstream)


@pytest.mark.parametrize(("script", "expected"), [
    ("keepalive", KEEPALIVE), ("record", RECORDER), ("metrics", METRICS),
    ("bridge", BRIDGE | KEEPALIVE | RECORDER | METRICS),
])
def test_each_script_lists_exactly_the_options_of_its_addons(script: str, expected: set[str]) -> None:
    out = subprocess.run([str(BIN / "mitmdump"), "-s", str(script_path(script)), "--options"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    listed = set(re.findall(r"^(codexbridge_\w+):", out.stdout, re.M))
    assert listed == expected


def test_keepalive_script_alone_pings_and_relays_frames_unchanged(tmp_path: Path, ws_upstream: Upstream) -> None:
    proxy = start_mitmdump(tmp_path, ws_upstream.url, "codexbridge_ping_interval=2", "codexbridge_ping_timeout=1",
                           script=str(script_path("keepalive")))

    async def go() -> tuple[list[str], list[str], list[float]]:
        direct = await RawWebSocket.connect(ws_upstream.port)
        expected = await turn(direct, "[[deltas:20]] relay me")
        await direct.close()
        ws = await RawWebSocket.connect(proxy.port)
        relayed = await turn(ws, "[[deltas:20]] relay me")
        await asyncio.sleep(5.0)
        assert ws.close_code is None, "a client that answers pings must stay connected"
        again = await turn(ws, "still here")
        assert again[-1].startswith('{"type":"response.completed"')
        await ws.close()
        return expected, relayed, ws.pings

    try:
        expected, relayed, pings = asyncio.run(go())
    finally:
        proxy.stop()
    assert [_VOLATILE.sub("_", f) for f in relayed] == [_VOLATILE.sub("_", f) for f in expected]
    assert len(relayed) == len(expected) > 20
    assert 2 <= len(pings) <= 3, pings
    assert "stage=downstream_ping_ok" in proxy.log
    assert "stage=session_end mode=passthrough" in proxy.log and "mode=bridge" not in proxy.log  # relayed, not bridged


def test_keepalive_script_alone_never_bridges(tmp_path: Path, upstream: Upstream) -> None:
    proxy = start_mitmdump(tmp_path, upstream.url, script=str(script_path("keepalive")))

    async def go() -> None:
        with pytest.raises(ConnectionError, match="rejected with 405"):
            await RawWebSocket.connect(proxy.port)

    try:
        asyncio.run(go())  # the upstream's own refusal reaches the client: nothing answered the upgrade instead
    finally:
        proxy.stop()
    assert "mode=bridge" not in proxy.log


def test_bridge_record_and_keepalive_scripts_together_do_each_thing_once(tmp_path: Path, upstream: Upstream) -> None:
    rec_dir = tmp_path / "rec"
    proxy = start_with_scripts(tmp_path, upstream.url, ("bridge", "record", "keepalive"), f"codexbridge_record={rec_dir}",
                               "codexbridge_ping_interval=2", "codexbridge_ping_timeout=1")

    async def go() -> list[float]:
        ws = await RawWebSocket.connect(proxy.port)
        first = await turn(ws, "one")
        assert first[-1].startswith('{"type":"response.completed"')
        await asyncio.sleep(5.0)
        await turn(ws, "two")
        await ws.close()
        return ws.pings

    try:
        pings = asyncio.run(go())
    finally:
        proxy.stop()
    assert "already exists" not in proxy.log and "error in script" not in proxy.log
    assert 2 <= len(pings) <= 3, pings  # one schedule: a ping every 2 s of silence, not two
    assert all(b - a > 1.5 for a, b in zip(pings, pings[1:], strict=False)), pings
    (recording,) = rec_dir.glob("*.jsonl")  # one recording per session
    rec = load(str(recording))
    assert rec.header.mode == "bridge" and rec.complete and not rec.ended_by_shutdown
    assert sum(isinstance(e, ClientFrame) for e in rec.events) == 2
    assert sum(isinstance(e, UpstreamRequest) for e in rec.events) == 2
    assert sum(isinstance(e, Ping) for e in rec.events) == len(pings)


@pytest.mark.codex
@pytest.mark.parametrize("websockets", [False, True], ids=["http-mode", "native-websocket"])
def test_record_script_records_real_codex_and_codex_reruns_offline_from_it(
    tmp_path: Path, codex: Codex, websockets: bool
) -> None:
    rec_dir = tmp_path / "rec"
    live, quiet = record_codex_echo(tmp_path, codex, rec_dir, websockets=websockets,  # offline after it
                                    upstream_flags=("--websocket",) if websockets else (),
                                    script=str(script_path("record")))
    recordings = [load(str(f)) for f in sorted(rec_dir.glob("*.jsonl"))]
    assert recordings and all(r.complete for r in recordings)
    if websockets:
        (rec,) = recordings  # one relayed WebSocket session: prewarm, turn, tool follow-up
        assert rec.header.mode == "passthrough"
        assert sum(isinstance(e, ClientFrame) for e in rec.events) == 3
        assert any(isinstance(e, ServerFrame) for e in rec.events)
    else:
        assert [r.header.mode for r in recordings] == ["http", "http"]  # one file per POST: turn, tool follow-up

    server = start_replay_server(tmp_path, rec_dir)
    try:
        codex.configure(f"{server.url}/v1", websockets=websockets, extra=quiet)
        replayed = codex.exec("run echo")
        report = server.report()
    finally:
        server.stop()
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == live.stdout
    assert report["divergences"] == [], report
    if websockets:
        assert report["turns_served"] == report["turns_total"] == 3
    else:
        assert report["posts_served"] == report["posts_total"] == 2
