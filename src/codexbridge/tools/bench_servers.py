"""Loopback upstream for `codexbridge bench`: POST + SSE and the WebSocket mode on one port, on raw asyncio.

Not a general server: it is built to never be the bottleneck of the benchmark. Requests are parsed by hand,
event bytes are rendered once per delta count and cached, a burst goes out in one write, a paced stream
writes one event per tick on an absolute schedule (the server's own lateness does not accumulate).

The workload comes from the request itself: `metadata.bench_deltas` and `metadata.bench_pace_ms` in the
POST body or in the `response.create` frame (the bridge forwards `metadata` unchanged). A WebSocket upgrade
whose target carries `?ping=N` gets a Ping after N seconds without a write once its first text frame went
out (the direct baseline of the idle workload); no other connection is ever pinged.

Run: python -m codexbridge.tools.bench_servers --port P [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from itertools import count
from urllib.parse import parse_qs, urlsplit

from codexbridge.responses.events import user_message
from codexbridge.wire.wsframes import accept_token

MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
MAX_DELTAS = 1_000_000
DELTA_TEXT = "tok "

_ids = count(1)


# -- wire helpers shared with the bench clients ---------------------------------------------------


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """An unmasked (server-to-client) final frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def ws_masked_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked (client-to-server) final frame."""
    n = len(payload)
    key = os.urandom(4)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + key + unmask(payload, key)


def unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def bench_request(deltas: int, pace_ms: int, model: str = "bench-model") -> dict[str, object]:
    """The body fields a bench client sends (POST body, or response.create frame without `type`)."""
    return {
        "model": model,
        "input": [user_message("bench")],
        "stream": True,
        "store": False,
        "metadata": {"bench_deltas": str(deltas), "bench_pace_ms": str(pace_ms)},
    }


def workload_of(body: dict[str, object]) -> tuple[int, int]:
    meta = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(meta, dict):
        return 1, 0
    try:
        deltas = max(0, min(MAX_DELTAS, int(meta.get("bench_deltas", 1))))
        pace = max(0, min(10_000, int(meta.get("bench_pace_ms", 0))))
    except (TypeError, ValueError):
        return 1, 0
    return deltas, pace


# -- event rendering ------------------------------------------------------------------------------


def created_event(rid: str, model: str) -> bytes:
    return dumps({"type": "response.created", "sequence_number": 0,
                  "response": {"id": rid, "object": "response", "status": "in_progress", "model": model,
                               "output": []}})


def delta_event(i: int) -> bytes:
    return (b'{"type":"response.output_text.delta","sequence_number":%d,"item_id":"msg_bench","output_index":0,'
            b'"content_index":0,"delta":"%s"}' % (i + 1, DELTA_TEXT.encode()))


def completed_event(rid: str, model: str, deltas: int) -> bytes:
    return dumps({"type": "response.completed", "sequence_number": deltas + 1,
                  "response": {"id": rid, "object": "response", "status": "completed", "model": model,
                               "output": [],
                               "usage": {"input_tokens": 1, "output_tokens": deltas, "total_tokens": deltas + 1}}})


def sse_event(data: bytes, name: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_sse_block: dict[int, bytes] = {}
_ws_block: dict[int, bytes] = {}


def sse_deltas(n: int) -> bytes:
    block = _sse_block.get(n)
    if block is None:
        block = b"".join(sse_event(delta_event(i), b"response.output_text.delta") for i in range(n))
        if len(_sse_block) > 16:
            _sse_block.clear()
        _sse_block[n] = block
    return block


def ws_deltas(n: int) -> bytes:
    block = _ws_block.get(n)
    if block is None:
        block = b"".join(ws_frame(delta_event(i)) for i in range(n))
        if len(_ws_block) > 16:
            _ws_block.clear()
        _ws_block[n] = block
    return block


# -- the server -----------------------------------------------------------------------------------


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


class BenchUpstream:
    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self.handle, host, port, backlog=4096, limit=MAX_HEAD)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if method == "GET" and headers.get("upgrade", "").lower() == "websocket":
                    await self.serve_ws(reader, writer, headers, target)
                    return
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    writer.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                length = int(headers.get("content-length", "0") or 0)
                if length > MAX_BODY:
                    writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                body = await reader.readexactly(length) if length else b""
                if method == "POST" and urlsplit(target).path.rstrip("/").endswith("/responses"):
                    try:
                        obj = json.loads(body)
                    except ValueError:
                        obj = {}
                    await self.serve_sse(writer, obj)
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            writer.close()

    async def serve_sse(self, writer: asyncio.StreamWriter, body: dict[str, object]) -> None:
        deltas, pace = workload_of(body)
        model = str(body.get("model") or "bench-model")
        rid = f"resp_bench_{next(_ids)}"
        created = sse_event(created_event(rid, model), b"response.created")
        completed = sse_event(completed_event(rid, model, deltas), b"response.completed")
        if not pace:
            block = sse_deltas(deltas)
            writer.write(SSE_HEAD + b"%x\r\n" % (len(created) + len(block) + len(completed)) + created)
            writer.write(block)
            writer.write(completed + b"\r\n0\r\n\r\n")
            await writer.drain()
            return
        writer.write(SSE_HEAD + chunk(created))
        await write_paced(deltas, pace, lambda i: writer.write(chunk(sse_event(delta_event(i), b"response.output_text.delta"))),
                          writer.drain)
        writer.write(chunk(completed) + b"0\r\n\r\n")
        await writer.drain()

    async def serve_ws(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str],
                       target: str) -> None:
        key = headers.get("sec-websocket-key", "")
        if not key or headers.get("sec-websocket-version") != "13":
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept_token(key).encode() + b"\r\n\r\n")
        query = parse_qs(urlsplit(target).query)
        ping_interval = float(query.get("ping", ["0"])[0] or 0)
        conn = _WsConn(writer, ping_interval)
        try:
            buf = bytearray()
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                buf += data
                i, n = 0, len(buf)
                while n - i >= 2:
                    b0, b1 = buf[i], buf[i + 1]
                    ln, h = b1 & 0x7F, 2
                    if ln == 126:
                        if n - i < 4:
                            break
                        ln, h = int.from_bytes(buf[i + 2:i + 4], "big"), 4
                    elif ln == 127:
                        if n - i < 10:
                            break
                        ln, h = int.from_bytes(buf[i + 2:i + 10], "big"), 10
                    if ln > MAX_BODY:
                        return
                    masked = b1 & 0x80
                    end = i + h + (4 if masked else 0) + ln
                    if end > n:
                        break
                    payload = bytes(buf[end - ln:end])
                    if masked:
                        payload = unmask(payload, bytes(buf[i + h:i + h + 4]))
                    i = end
                    op = b0 & 0x0F
                    if op == 8:
                        writer.write(ws_frame(payload[:2], 8))
                        await writer.drain()
                        return
                    if op == 9:
                        conn.write(ws_frame(payload, 10), text=False)
                    elif op == 1:  # text; bench clients never fragment
                        conn.partial += payload
                        if b0 & 0x80:
                            frame, conn.partial = conn.partial, b""
                            await self.answer_ws(conn, frame)
                del buf[:i]
        finally:
            conn.stop()

    async def answer_ws(self, conn: _WsConn, frame: bytes) -> None:
        try:
            obj = json.loads(frame)
        except ValueError:
            return
        if not isinstance(obj, dict) or obj.get("type") != "response.create":
            return
        deltas, pace = workload_of(obj)
        model = str(obj.get("model") or "bench-model")
        rid = f"resp_bench_{next(_ids)}"
        created = ws_frame(created_event(rid, model))
        completed = ws_frame(completed_event(rid, model, deltas))
        w = conn.writer
        if not pace:
            w.write(created)
            w.write(ws_deltas(deltas))
            conn.write(completed)
            await w.drain()
            return
        conn.write(created)
        await write_paced(deltas, pace, lambda i: conn.write(ws_frame(delta_event(i))), w.drain)
        conn.write(completed)
        await w.drain()


async def write_paced(count: int, pace_ms: int, write_delta: Callable[[int], object],
                      drain: Callable[[], Awaitable[None]]) -> None:
    """Writes `count` deltas `pace_ms` apart on a fixed schedule (one late write does not push back the rest)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    step = pace_ms / 1000.0
    for i in range(count):
        delay = start + (i + 1) * step - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        write_delta(i)
        await drain()


class _WsConn:
    """One upstream WebSocket: writes, and (only when asked by ?ping=N) an idle-ping timer."""

    __slots__ = ("writer", "interval", "last_write", "started", "timer", "partial", "pings")

    def __init__(self, writer: asyncio.StreamWriter, interval: float) -> None:
        self.writer = writer
        self.interval = interval
        self.last_write = 0.0
        self.started = False
        self.timer: asyncio.TimerHandle | None = None
        self.partial = b""
        self.pings = 0

    def write(self, data: bytes, text: bool = True) -> None:
        self.writer.write(data)
        loop = asyncio.get_running_loop()
        self.last_write = loop.time()
        if text and self.interval > 0 and not self.started:
            self.started = True
            self.timer = loop.call_at(self.last_write + self.interval, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        due = self.last_write + self.interval
        now = loop.time()
        if self.writer.is_closing():
            return
        if now >= due:
            self.pings += 1
            self.writer.write(ws_frame(b"bench-%d" % self.pings, 9))
            self.last_write = now
            due = now + self.interval
        self.timer = loop.call_at(due, self._tick)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def self_signed_context(host: str) -> ssl.SSLContext:
    """A server context with a fresh self-signed RSA-2048 certificate for `host` (and localhost)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        alt.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        pass
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=7)).add_extension(x509.SubjectAlternativeName(alt), False)
            .sign(key, hashes.SHA256()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="codexbridge-bench-tls-") as folder:
        pem = os.path.join(folder, "cert.pem")
        with open(pem, "wb") as out:
            out.write(cert.public_bytes(serialization.Encoding.PEM))
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        context.load_cert_chain(pem)
    return context


async def serve(host: str, port: int, tls_port: int | None = None) -> None:
    upstream = BenchUpstream()
    tls_server = None
    if tls_port is not None:  # (first: the plain port accepting means that both do)
        tls_server = await asyncio.start_server(upstream.handle, host, tls_port, backlog=4096, limit=MAX_HEAD,
                                                ssl=self_signed_context(host))
        print(f"bench upstream listening on https://{host}:{tls_server.sockets[0].getsockname()[1]}", flush=True)
    bound = await upstream.start(host, port)
    print(f"bench upstream listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    assert upstream.server is not None
    upstream.server.close()
    if tls_server is not None:
        tls_server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-port", type=int, default=None, help="also listen over TLS on this port")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("the bench upstream listens on loopback only")
    asyncio.run(serve(args.host, args.port, args.tls_port))


if __name__ == "__main__":
    main()
