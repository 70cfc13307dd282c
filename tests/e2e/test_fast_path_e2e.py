"""The listener's fast path for bridged upgrades (codexbridge_fast_path) through a real mitmdump: taken for a
bridged upgrade, over plain TCP and over TLS, with the same recording, metrics, flow file and hooks as mitmproxy's own
path; everything else still goes through mitmproxy (over TLS: given back to it once decrypted)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import re
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.connection
import h2.events
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


HOOK_TRACE = """
import logging

from mitmproxy import connection

HOOKS = ("client_connected", "tls_start_client", "tls_established_client", "tls_failed_client", "requestheaders", "request", "responseheaders", "response", "websocket_start",
         "websocket_end", "client_disconnected")


def _client(arg):
    for path in ("client_conn", "context.client", "client"):
        value = arg
        for name in path.split("."):
            value = getattr(value, name, None)
        if isinstance(value, connection.Client):
            return value
    return arg if isinstance(arg, connection.Client) else None


def _tracer(name):
    def trace(arg):
        client = _client(arg)
        logging.getLogger("hooktrace").info("hook_seen port=%s name=%s", client.peername[1] if client else 0, name)
    return trace


class Trace:
    pass


for _name in HOOKS:
    setattr(Trace, _name, staticmethod(_tracer(_name)))
addons = [Trace()]
"""
HOOK_SEEN = re.compile(r"hook_seen port=(\d+) name=(\w+)")


def hooks_seen(log: str) -> list[list[str]]:
    """The traced hooks of each client connection, in the order the connections first showed up."""
    seen: dict[str, list[str]] = {}
    for port, name in HOOK_SEEN.findall(log):
        seen.setdefault(port, []).append(name)
    return list(seen.values())


@pytest.fixture(scope="module")
def proxies(module_tmp: Path, upstream: Upstream) -> Iterator[dict[bool, tuple[Mitmdump, int, Path]]]:
    """Two bridges with recording, metrics, a flow file and a hook trace: the fast path on (the default) and off."""
    trace = module_tmp / "hooktrace.py"
    trace.write_text(HOOK_TRACE)
    started = {}
    for fast in (True, False):
        port, metrics, where = free_port(), free_port(), module_tmp / f"fast-{fast}"
        options = [*TEST_OPTIONS, f"codexbridge_metrics=127.0.0.1:{metrics}", f"codexbridge_record={where / 'rec'}",
                   f"save_stream_file={where / 'flows'}", f"codexbridge_fast_path={str(fast).lower()}"]
        cmd = mitmdump_command(upstream.url, port, options, scripts=("bridge",)) + ["-s", str(trace)]
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


async def session(port: int, tls: bool = False) -> list[str]:
    """Two turns, a ping, and the client's close."""
    ws = await RawWebSocket.connect(port, headers={"Authorization": "Bearer sk-fastpathsecret"}, tls=tls)
    frames = await turn(ws, "say hi") + await turn(ws, "say hi again")
    await ws.close()
    return frames


def newest(where: Path, count: int) -> Path:
    files = sorted((where / "rec").glob("*.jsonl"), key=lambda f: f.stat().st_mtime_ns)
    assert len(files) == count, files
    return files[-1]


def normalised(recording: Path) -> list[Any]:
    """A recording without its times and ids, with the upstream's bytes and the relayed count summed per stretch
    (how a stream is cut into reads differs from one run to the next), and the upstream streams' ends gathered at
    the end (a stream's end races the client's next frame, its close and even the next response's first reads)."""
    lines: list[Any] = []
    ends: list[Any] = []
    for raw in recording.read_text().splitlines():
        record = json.loads(VOLATILE.sub(lambda m: m.group(1) or m.group(2) or m.group(3) or "msg", raw))
        for volatile in ("t", "started_at"):
            record.pop(volatile, None)
        if record.get("kind") == "upstream_end":
            ends.append(record)
            continue
        if record.get("kind") in ("upstream_chunk", "to_client"):  # interleaved as the reads came: summed per stretch
            if not lines or lines[-1].get("kind") != "stream":
                lines.append({"kind": "stream", "text": "", "relayed": 0, "synthetic": 0})
            lines[-1]["text"] += record.get("text", "")
            lines[-1]["relayed"] += record.get("relayed", 0)
            lines[-1]["synthetic"] += bool(record.get("synthetic"))
            continue
        lines.append(record)
    return lines + ends


def flows(where: Path) -> list[Any]:
    with open(where / "flows", "rb") as f:
        return list(io.FlowReader(f).stream())


def ended(where: Path, metrics: int, count: int) -> bool:
    """The count-th session's end reached the flow file, the metrics and the recording."""
    recordings = list((where / "rec").glob("*.jsonl"))
    return ((where / "flows").exists() and len(flows(where)) == count
            and scrape(metrics).get(("codexbridge_sessions_open", (("mode", "bridge"),))) == 0
            and len(recordings) == count and all('"kind":"complete"' in r.read_text() for r in recordings))


def lines_paired(proxy: Mitmdump) -> bool:
    """mitmproxy's connection lines come in pairs, and the last connection's last hook ran."""
    hooks = hooks_seen(proxy.log)
    return (connection_lines(proxy, "connect") == connection_lines(proxy, "disconnect")
            and bool(hooks) and hooks[-1][-1] == "client_disconnected")


def torn_down(proxy: Mitmdump) -> bool:
    """lines_paired, and the server side's teardown (when there was one) logged to its end."""
    return lines_paired(proxy) and proxy.log.count("closing transports...") == proxy.log.count("transports closed!")


def connection_lines(proxy: Mitmdump, what: str) -> int:
    return len(re.findall(rf"\] client {what}$", proxy.log, re.MULTILINE))


async def settle(check: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_bridged_upgrade_takes_the_fast_path_and_looks_the_same_as_through_mitmproxy(
        proxies: dict[bool, tuple[Mitmdump, int, Path]], tls: bool) -> None:
    results = {}
    count = 1 + tls  # (the TLS case runs second, on the same proxies)
    for fast, (proxy, metrics, where) in proxies.items():
        taken = proxy.log.count(FAST)
        frames = asyncio.run(session(proxy.port, tls))
        asyncio.run(settle(functools.partial(ended, where, metrics, count)))
        asyncio.run(settle(functools.partial(lines_paired, proxy)))
        results[fast] = (frames, scrape(metrics), normalised(newest(where, count)), flows(where)[-1:],
                         proxy.log.count(FAST) - taken, connection_lines(proxy, "connect"),
                         hooks_seen(proxy.log)[-1])
    on, off = results[True], results[False]
    assert on[4] == 1 and off[4] == 0  # the fast path served the upgrade only where it is on
    assert on[5] == off[5] >= 1  # mitmproxy's connection lines, where they are shown (the start's port probe too)
    assert [json.loads(f)["type"] for f in on[0]] == [json.loads(f)["type"] for f in off[0]]
    assert on[1] == off[1]  # the same metrics, counter by counter
    assert on[1][("codexbridge_sessions_total", (("mode", "bridge"),))] == count
    assert on[2] == off[2]  # the same recording, line by line (times and ids aside)
    assert "sk-fastpathsecret" not in json.dumps(on[2])  # redacted on the fast path too
    assert on[6] == off[6]  # the same hooks (those traced: an addon with next_layer or tls_clienthello turns it off)
    if tls:
        assert on[6][:3] == ["client_connected", "tls_start_client", "tls_established_client"]
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

    assert proxy.log.count(FAST) == before

    # Over TLS the request is seen once decrypted: anything but a bridged upgrade is given back to mitmproxy's
    # layers, its TLS connection and all, and keeps working (two requests on one connection, the POST streamed).
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    over_tls = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context, timeout=15)
    try:
        over_tls.request("POST", "/v1/responses", body=body, headers={"Content-Type": "application/json"})
        first = over_tls.getresponse()
        assert first.status == 200 and b"response.completed" in first.read()
        over_tls.request("GET", "/v1/models?probe=1")  # the upstream has no such route: its own 404 comes back
        second = over_tls.getresponse()
        assert second.status == 404 and b"no route for GET /v1/models" in second.read()
    finally:
        over_tls.close()
    assert http2_get(proxy.port, "/v1/models") == ("h2", "404")  # ALPN h2: mitmproxy's HTTP/2 layer serves it
    assert proxy.log.count(FAST) == before
    assert "Client TLS handshake failed" not in proxy.log


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


def test_a_failed_tls_handshake_is_reported_as_by_mitmproxy(proxies: dict[bool, tuple[Mitmdump, int, Path]]) -> None:
    async def distrustful(port: int) -> None:  # checks the certificate against the system's CAs: it fails
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context(),
                                          server_hostname="localhost")

    seen = {}
    for fast, (proxy, _, _) in proxies.items():
        failed = proxy.log.count("Client TLS handshake failed")
        asyncio.run(distrustful(proxy.port))
        asyncio.run(settle(functools.partial(lines_paired, proxy)))
        assert proxy.log.count("Client TLS handshake failed") == failed + 1
        seen[fast] = (hooks_seen(proxy.log)[-1], re.findall(r"\] (Client TLS handshake failed\..*)", proxy.log)[-1])
    assert seen[True] == seen[False]  # the same hooks and the same line, from the fast path and from mitmproxy
    assert seen[True][0] == ["client_connected", "tls_start_client", "tls_failed_client", "client_disconnected"]
    assert "for localhost" in seen[True][1]


def test_an_addon_that_decides_on_tls_keeps_mitmproxy_s_tls_layer(module_tmp: Path, upstream: Upstream) -> None:
    script = module_tmp / "clienthello.py"
    script.write_text("class Hello:\n    def tls_clienthello(self, data):\n        pass\n\n\naddons = [Hello()]\n")
    port = free_port()
    cmd = mitmdump_command(upstream.url, port, TEST_OPTIONS, scripts=("bridge",)) + ["-s", str(script)]
    proxy = Mitmdump(start_process(cmd, port, module_tmp / f"mitmdump-{port}.log").child, upstream.url)
    try:
        frames = asyncio.run(session(port, tls=True))
        assert json.loads(frames[-1])["type"] == "response.completed"
        asyncio.run(settle(lambda: "stage=session_end mode=bridge" in proxy.log))
        assert FAST not in proxy.log  # the addon could have asked to leave the connection alone: mitmproxy decides
    finally:
        proxy.stop()


async def tls_client_that_leaves(port: int, sends: bytes) -> bytes:
    """A TLS client that sends `sends` (maybe nothing, maybe half a request), then closes (with its close_notify)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    answer = b""
    if sends:
        writer.write(sends)
        await writer.drain()
        if sends.endswith(b"\r\n\r\n"):
            answer = await reader.read(64)
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(2):
            await writer.wait_closed()
    return answer


def http2_get(port: int, path: str) -> tuple[str | None, str | None]:
    """A GET over HTTP/2 negotiated by ALPN: the protocol agreed and the answer's status."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "https"),
                              (":authority", f"127.0.0.1:{port}")], end_stream=True)
        tls.sendall(conn.data_to_send())
        status = None
        while status is None:
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"].decode()
            tls.sendall(conn.data_to_send())
        return tls.selected_alpn_protocol(), status


LINE = re.compile(r"^\[[\d:.]+\]\[127\.0\.0\.1:\d+\] (.*)$", re.MULTILINE)


@pytest.mark.parametrize("sends", [b"", b"GET /v1/responses HTTP/1.1\r\nHost: x\r\n",
                                   b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                                   b"GET /v1/other HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"],
                         ids=["nothing", "half-a-head", "h2-prior-knowledge", "another-path"])
def test_a_tls_client_without_a_bridged_upgrade_is_served_as_by_mitmproxy(
        proxies: dict[bool, tuple[Mitmdump, int, Path]], sends: bytes) -> None:
    seen = {}
    for fast, (proxy, _, _) in proxies.items():
        before = len(LINE.findall(proxy.log))
        answer = asyncio.run(tls_client_that_leaves(proxy.port, sends))
        asyncio.run(settle(functools.partial(torn_down, proxy)))
        seen[fast] = (answer[:12], LINE.findall(proxy.log)[before:])
        assert "has crashed" not in proxy.log
    assert seen[True] == seen[False]  # the same answer and the same connection lines, handed back or not
    assert seen[True][1][0] == "client connect" and "client disconnect" in seen[True][1]
