"""The listener's fast path for bridged upgrades (codexbridge_fast_path) through a real mitmdump: taken for a
bridged upgrade, with the same recording, metrics and flow file as mitmproxy's own path; everything else still
goes through mitmproxy."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from mitmproxy import io
from prometheus_client.parser import text_string_to_metric_families

from codexbridge.tools.procs import free_port, mitmdump_command
from support.mitmdump import TEST_OPTIONS, Mitmdump
from support.processes import start_process
from support.rawws import RawWebSocket
from support.turns import turn
from support.upstream import Upstream

FAST = "stage=fast_path"
# What differs from one run of the same session to the next: the mock upstream's ids and times, the client's key.
VOLATILE = re.compile(r'(resp|req)_mock_\d+|msg_[0-9a-f]{12}|(created_at\\?":)\d+|(Sec-WebSocket-Key",")[^"]+')


@pytest.fixture(scope="module")
def proxies(module_tmp: Path, upstream: Upstream) -> Iterator[dict[bool, tuple[Mitmdump, int, Path]]]:
    """Two bridges with recording, metrics and a flow file: the fast path on (the default) and off."""
    started = {}
    for fast in (True, False):
        port, metrics, where = free_port(), free_port(), module_tmp / f"fast-{fast}"
        options = [*TEST_OPTIONS, f"codexbridge_metrics=127.0.0.1:{metrics}", f"codexbridge_record={where / 'rec'}",
                   f"save_stream_file={where / 'flows'}", f"codexbridge_fast_path={str(fast).lower()}"]
        cmd = mitmdump_command(upstream.url, port, options, scripts=("bridge",))
        proxy = Mitmdump(start_process(cmd, port, module_tmp / f"mitmdump-{port}.log").child, upstream.url)
        started[fast] = (proxy, metrics, where)
    yield started
    for proxy, _, _ in started.values():
        proxy.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if not s.name.endswith(("_bucket", "_sum", "_created"))}


async def session(port: int) -> list[str]:
    """Two turns, a ping, and the client's close."""
    ws = await RawWebSocket.connect(port, headers={"Authorization": "Bearer sk-fastpathsecret"})
    frames = await turn(ws, "say hi") + await turn(ws, "say hi again")
    await ws.close()
    return frames


def normalised(where: Path) -> list[Any]:
    """A recording without its times and ids, with the upstream's bytes and the relayed count summed per stretch
    (how a stream is cut into reads differs from one run to the next)."""
    files = sorted((where / "rec").glob("*.jsonl"))
    assert len(files) == 1, files
    lines: list[Any] = []
    for raw in files[0].read_text().splitlines():
        record = json.loads(VOLATILE.sub(lambda m: m.group(1) or m.group(2) or m.group(3) or "msg", raw))
        for volatile in ("t", "started_at"):
            record.pop(volatile, None)
        if record.get("kind") in ("upstream_chunk", "to_client"):  # interleaved as the reads came: summed per stretch
            if not lines or lines[-1].get("kind") != "stream":
                lines.append({"kind": "stream", "text": "", "relayed": 0, "synthetic": 0})
            lines[-1]["text"] += record.get("text", "")
            lines[-1]["relayed"] += record.get("relayed", 0)
            lines[-1]["synthetic"] += bool(record.get("synthetic"))
            continue
        lines.append(record)
    tail = [line.get("kind") for line in lines[-3:]]
    if tail == ["close", "upstream_end", "complete"]:  # the last stream's end and the client's close race
        lines[-3], lines[-2] = lines[-2], lines[-3]
    return lines


def flows(where: Path) -> list[Any]:
    with open(where / "flows", "rb") as f:
        return list(io.FlowReader(f).stream())


def ended(where: Path, metrics: int) -> bool:
    """The session's end reached the flow file, the metrics and the recording."""
    recording = next((where / "rec").glob("*.jsonl"), None)
    return ((where / "flows").exists() and bool(flows(where))
            and scrape(metrics).get(("codexbridge_sessions_open", (("mode", "bridge"),))) == 0
            and recording is not None and '"kind":"complete"' in recording.read_text())


def lines_paired(proxy: Mitmdump) -> bool:
    return proxy.log.count("client connect") == proxy.log.count("client disconnect")


async def settle(check: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


def test_a_bridged_upgrade_takes_the_fast_path_and_looks_the_same_as_through_mitmproxy(
        proxies: dict[bool, tuple[Mitmdump, int, Path]]) -> None:
    results = {}
    for fast, (proxy, metrics, where) in proxies.items():
        frames = asyncio.run(session(proxy.port))
        asyncio.run(settle(functools.partial(ended, where, metrics)))
        asyncio.run(settle(functools.partial(lines_paired, proxy)))
        results[fast] = (frames, scrape(metrics), normalised(where), flows(where), proxy.log.count(FAST),
                         proxy.log.count("client connect"))
    on, off = results[True], results[False]
    assert on[4] == 1 and off[4] == 0  # the fast path served the upgrade only where it is on
    assert on[5] == off[5] >= 1  # mitmproxy's connection lines, where they are shown (the start's port probe too)
    assert [json.loads(f)["type"] for f in on[0]] == [json.loads(f)["type"] for f in off[0]]
    assert on[1] == off[1]  # the same metrics, counter by counter
    assert on[1][("codexbridge_sessions_total", (("mode", "bridge"),))] == 1
    assert on[2] == off[2]  # the same recording, line by line (times and ids aside)
    assert "sk-fastpathsecret" not in json.dumps(on[2])  # redacted on the fast path too
    (flow_on,), (flow_off,) = on[3], off[3]  # the flow file holds the session, frames and all, as before
    assert flow_on.response.status_code == flow_off.response.status_code == 101
    assert len(flow_on.websocket.messages) == len(flow_off.websocket.messages) > 2
    assert flow_on.websocket.close_code == flow_off.websocket.close_code
    assert flow_on.metadata["codexbridge"]["mode"] == "bridge"


def test_other_traffic_still_goes_through_mitmproxy(proxies: dict[bool, tuple[Mitmdump, int, Path]],
                                                   upstream: Upstream) -> None:
    proxy = proxies[True][0]
    before = proxy.log.count(FAST)
    body = json.dumps({"model": "m", "stream": True, "input": "say hi"}).encode()
    post = urllib.request.Request(f"{proxy.base_url}/responses", data=body, method="POST",
                                  headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=15) as r:  # Codex in HTTP mode: mitmproxy relays the POST
        assert b"response.completed" in r.read()

    async def other_upgrade() -> int:  # an upgrade on another path: mitmproxy asks the upstream, which refuses
        try:
            async with websockets.connect(f"ws://127.0.0.1:{proxy.port}/v1/other", open_timeout=10):
                return 101
        except websockets.InvalidStatus as e:
            return e.response.status_code

    assert asyncio.run(other_upgrade()) != 101

    async def over_tls() -> str:  # TLS to the proxy: mitmproxy's TLS layer, then the bridge as before
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        async with websockets.connect(f"wss://127.0.0.1:{proxy.port}/v1/responses", ssl=context, open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "response.create", "model": "m", "input": "say hi"}))
            while True:
                event = json.loads(await ws.recv())
                if event["type"] in ("response.completed", "error"):
                    return str(event["type"])

    assert asyncio.run(over_tls()) == "response.completed"
    assert proxy.log.count(FAST) == before
    assert "stage=session_end mode=bridge" in proxy.log


def test_passthrough_upgrades_go_through_mitmproxy(module_tmp: Path, ws_upstream: Upstream) -> None:
    port = free_port()
    cmd = mitmdump_command(ws_upstream.url, port, [*TEST_OPTIONS, "codexbridge_mode=passthrough"], scripts=("bridge",))
    proxy = Mitmdump(start_process(cmd, port, module_tmp / f"mitmdump-{port}.log").child, ws_upstream.url)
    try:
        frames = asyncio.run(session(port))
        assert json.loads(frames[-1])["type"] == "response.completed"
        assert FAST not in proxy.log
        assert ws_upstream.stats()["ws_connections"] >= 1  # the upstream itself served the session
    finally:
        proxy.stop()
