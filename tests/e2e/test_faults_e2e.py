"""Faults a bridged session must survive, through a real mitmdump: a misbehaving client (invalid UTF-8, fragments
with pings between them, reserved bits, no mask, 40 MB, 500 bad frames in a row), an upstream that frames its
answer in every legal way or breaks it (CR line ends, gzip, chunk extensions and trailers, HTTP/1.0, 100 Continue,
an 8 MB event, silence, RST, a redirect, JSON instead of a stream, bytes that are not UTF-8), an exception inside
the bridge, and thousands of short sessions (file descriptors back to their baseline)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from codexbridge.responses.events import TERMINAL_EVENTS
from support.mitmdump import Mitmdump, start_mitmdump
from support.rawframes import BINARY, PING, TEXT, Closed, RawClient, fragments, frame
from support.upstream import Upstream

# -- an upstream that answers with the fault named in the request --------------------------------


def sse_events(text: str = "ok") -> bytes:
    response = {"id": "resp_fault", "object": "response", "output": []}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": {**response, "status": "in_progress"}},
        {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "m", "output_index": 0,
         "content_index": 0, "delta": text},
        {"type": "response.completed", "sequence_number": 2, "response": {**response, "status": "completed"}},
    ]
    return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode()) for e in events)


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
BIG_TEXT = "x" * (8 * 1024 * 1024)


def chunked(body: bytes, size: int = 100, extension: bytes = b"", trailers: bytes = b"") -> bytes:
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in pieces) + b"0\r\n" + trailers + b"\r\n"


def answer(fault: str, sock: socket.socket) -> None:
    """Writes the answer for one request; returns when the connection must close."""
    body = sse_events()
    if fault == "plain":
        sock.sendall(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body))
    elif fault == "cr_only":
        cr = body.replace(b"\n", b"\r")
        sock.sendall(SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(cr) + cr)
    elif fault == "gzip":
        packed = gzip.compress(body)
        sock.sendall(SSE_HEAD + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed) + packed)
    elif fault == "chunk_extensions_trailers":
        sock.sendall(SSE_HEAD + b"Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                     + chunked(body, 37, b";name=value;flag", b"X-Checksum: abc\r\n"))
    elif fault == "http10":
        sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body)
        raise ConnectionResetError  # the end of the body is the end of the connection
    elif fault == "continue":
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    elif fault == "event_8mb":
        big = sse_events(BIG_TEXT)
        sock.sendall(SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(big) + big)
    elif fault in ("silence", "silence_mid_stream"):
        if fault == "silence_mid_stream":
            first = body.split(b"\n\n")[0] + b"\n\n"
            sock.sendall(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(first), first))
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            sock.recv(1)  # until the bridge gives up
        raise ConnectionResetError
    elif fault == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raise ConnectionResetError
    elif fault == "redirect":
        sock.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n")
    elif fault == "json_200":
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
    elif fault == "invalid_utf8":
        bad = body.replace(b'"delta": "ok"', b'"delta": "ok \xff\xfe"')
        sock.sendall(SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(bad) + bad)


class FaultHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        buf = b""
        with contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                marker = body.split(b"[[fault:", 1)
                answer(marker[1].split(b"]]", 1)[0].decode() if len(marker) == 2 else "plain", sock)


class FaultServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def fault_upstream() -> Iterator[str]:
    server = FaultServer(("127.0.0.1", 0), FaultHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fault_bridge(module_tmp: Path, fault_upstream: str) -> Iterator[Mitmdump]:
    proxy = start_mitmdump(module_tmp, fault_upstream, "codexbridge_read_timeout=2")
    yield proxy
    proxy.stop()


def create(text: str) -> str:
    return json.dumps({"type": "response.create", "model": "m", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]})


async def ws_turn(ws: Any, text: str) -> list[dict[str, Any]]:
    await ws.send(create(text))
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while not events or events[-1]["type"] not in TERMINAL_EVENTS:
            raw = await ws.recv()
            assert isinstance(raw, str)
            events.append(json.loads(raw))
    return events


# -- the upstream's faults -----------------------------------------------------------------------

FINE = ["plain", "cr_only", "gzip", "chunk_extensions_trailers", "http10", "continue", "event_8mb"]
BROKEN = [("silence", 504, "upstream_timeout"), ("silence_mid_stream", 504, "upstream_timeout"),
          ("rst", 502, "upstream_"), ("redirect", 302, "upstream_http_302"), ("json_200", 502, "upstream_not_streaming"),
          ("invalid_utf8", 502, "upstream_invalid_utf8")]


@pytest.mark.parametrize("fault", FINE)
def test_every_legal_framing_of_the_answer_gives_the_same_events(fault_bridge: Mitmdump, fault: str) -> None:
    async def go() -> None:
        async with websockets.connect(fault_bridge.ws_url, max_size=None) as ws:
            events = await ws_turn(ws, f"[[fault:{fault}]]")
            assert [e["type"] for e in events] == ["response.created", "response.output_text.delta",
                                                   "response.completed"]
            assert events[1]["delta"] == (BIG_TEXT if fault == "event_8mb" else "ok")

    asyncio.run(go())


@pytest.mark.parametrize(("fault", "status", "code"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_answer_is_an_error_frame_and_the_session_goes_on(fault_bridge: Mitmdump, fault: str, status: int,
                                                                   code: str) -> None:
    async def go() -> None:
        # websockets fails the connection (1007) on a text frame that is not UTF-8, as RFC 6455 asks
        async with websockets.connect(fault_bridge.ws_url, max_size=None) as ws:
            events = await ws_turn(ws, f"[[fault:{fault}]]")
            error = events[-1]
            assert error["type"] == "error" and error["status"] == status, error
            assert error["error"]["code"].startswith(code), error
            after = await ws_turn(ws, "[[fault:plain]]")
            assert after[-1]["type"] == "response.completed"

    asyncio.run(go())


# -- the client's faults -------------------------------------------------------------------------


def turn(client: RawClient, text: str = "[[fault:plain]]", raw: bytes | None = None) -> list[dict[str, Any]]:
    client.send(raw if raw is not None else frame(create(text).encode()))
    events = [client.next_json(timeout=20)]
    while events[-1]["type"] not in TERMINAL_EVENTS:
        events.append(client.next_json(timeout=20))
    return events


@pytest.mark.parametrize(("what", "data", "code"), [
    ("invalid UTF-8", frame(b'{"type":"response.create","model":"\xc3\x28"}'), 1007),
    ("RSV1 without an extension", frame(create("x").encode(), rsv=0b100), 1002),
    ("unmasked", frame(create("x").encode(), masked=False), 1002),
], ids=["invalid UTF-8", "RSV1", "unmasked"])  # the frames carry random masks: ids of their own keep them stable
@pytest.mark.parametrize("after_a_turn", [False, True], ids=["first frame", "later frame"])
def test_protocol_violations_close_with_their_code(fault_bridge: Mitmdump, what: str, data: bytes, code: int,
                                                   after_a_turn: bool) -> None:
    client = RawClient.connect(fault_bridge.port)
    try:
        if after_a_turn:
            assert turn(client)[-1]["type"] == "response.completed"
        client.send(data)
        closed = client.next(timeout=10)
        assert isinstance(closed, Closed) and closed.code == code, closed
    finally:
        client.close()
    assert "has crashed" not in fault_bridge.log


def test_fragments_with_pings_between_them(fault_bridge: Mitmdump) -> None:
    client = RawClient.connect(fault_bridge.port)
    try:
        payload = create("[[fault:plain]] " + "é" * 300).encode()
        events = turn(client, raw=fragments(payload, TEXT, [1, 7, 100, 301, len(payload) - 1], ping_between=True))
        assert events[-1]["type"] == "response.completed"
        assert client.pongs == [b"between"] * 5
    finally:
        client.close()


def test_a_40_mb_frame_is_a_400_and_the_connection_stays_usable(fault_bridge: Mitmdump) -> None:
    client = RawClient.connect(fault_bridge.port, timeout=30)
    try:
        client.send(frame(create("x" * (40 * 1024 * 1024)).encode()))
        error = client.next_json(timeout=30)
        assert error["status"] == 400 and error["error"]["code"] == "frame_too_large"
        assert turn(client)[-1]["type"] == "response.completed"
    finally:
        client.close()


def test_500_bad_frames_in_a_row_get_500_errors_and_the_connection_stays_usable(fault_bridge: Mitmdump) -> None:
    bad = [frame(b"{bad"), frame(b'{"type":"response.create"}', BINARY), frame(b"[1,2]"), frame(b'"text"'),
           frame(b'{"type":"response.create","model":"m","input":7}')]
    client = RawClient.connect(fault_bridge.port)
    try:
        client.send(b"".join(bad[i % len(bad)] for i in range(500)))
        errors = [client.next_json() for _ in range(500)]
        assert all(e["type"] == "error" and e["status"] == 400 for e in errors)
        client.send(frame(b"", PING))
        assert turn(client)[-1]["type"] == "response.completed"
    finally:
        client.close()


# -- an exception inside the bridge ----------------------------------------------------------------

FAULTY_BRIDGE = '''
"""The shipped bridge, with a fault injected: a client frame carrying __boom__ raises inside the session."""
from codexbridge.bridge.session import BridgeSession
from codexbridge.scripts.bridge import addons

_original = BridgeSession.on_client_text


def on_client_text(self, text):
    if "__boom__" in text:
        raise RuntimeError("injected fault")
    return _original(self, text)


BridgeSession.on_client_text = on_client_text
'''


def test_an_exception_in_a_session_closes_it_with_1011_and_mitmproxy_never_crashes(tmp_path: Path,
                                                                                 upstream: Upstream) -> None:
    script = tmp_path / "faulty_bridge.py"
    script.write_text(FAULTY_BRIDGE)
    proxy = start_mitmdump(tmp_path, upstream.url, script=str(script))
    try:
        for after_a_turn in (False, True):  # read by mitmproxy's layers, then by the direct reader
            client = RawClient.connect(proxy.port)
            if after_a_turn:
                assert turn(client, "hi")[-1]["type"] == "response.completed"
            client.send_text(create("__boom__"))
            closed = client.next(timeout=10)
            assert isinstance(closed, Closed) and closed.code == 1011, closed
            client.close()
        client = RawClient.connect(proxy.port)  # the proxy serves on
        assert turn(client, "hi")[-1]["type"] == "response.completed"
        client.close()
    finally:
        proxy.stop()
    log = proxy.log
    assert "has crashed" not in log
    assert log.count("stage=bridge_error") == 2 and "injected fault" in log


# -- many short sessions ---------------------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_thousands_of_short_sessions_leave_no_file_descriptor_behind(tmp_path: Path, fault_upstream: str) -> None:
    # a bridge of its own, with the default read timeout (the module's 2 s is for the timeout tests: fifty
    # sessions at once on a loaded machine may wait longer than that for the upstream's first bytes)
    proxy = start_mitmdump(tmp_path, fault_upstream)
    try:
        _thousands_of_short_sessions(proxy)
    finally:
        proxy.stop()


def _thousands_of_short_sessions(proxy: Mitmdump) -> None:
    pid = proxy.proc.pid

    async def one() -> None:
        async with websockets.connect(proxy.ws_url) as ws:
            assert (await ws_turn(ws, "[[fault:plain]]"))[-1]["type"] == "response.completed"

    async def go(n: int) -> None:
        slot = asyncio.Semaphore(50)

        async def limited() -> None:
            async with slot:
                await one()

        await asyncio.gather(*(limited() for _ in range(n)))

    asyncio.run(go(50))  # warm: the upstream pool's connections exist from here on
    time.sleep(1)
    baseline = open_fds(pid)
    asyncio.run(go(2000))
    deadline = time.monotonic() + 10
    while open_fds(pid) > baseline + 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert open_fds(pid) <= baseline + 5, f"{open_fds(pid)} open file descriptors, {baseline} before"
