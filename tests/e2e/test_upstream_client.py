"""The bridge's upstream HTTP client against real loopback servers: keep-alive, a stale connection,
timeouts, refusals, back-pressure, and a real mitmdump as the next proxy (absolute-form and CONNECT)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from codexbridge.bridge.upstream import UpstreamError, UpstreamPool, UpstreamSettings, UpstreamTimeout
from codexbridge.tools.procs import free_port, mitmdump_binary
from support.certs import make_certs
from support.processes import start_process
from support.upstream import start_upstream


def run(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> None:
        asyncio.run(fn(*args, **kwargs))
    return wrapper


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server; yields its base URL and the list of requests seen per connection."""
    per_connection: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(per_connection)
        per_connection.append(0)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await handler(reader, writer, index)
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", per_connection
    finally:
        srv.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    return head, await reader.readexactly(length)


SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


async def body_of(pool: UpstreamPool, url: str, settings: UpstreamSettings | None = None) -> tuple[int, bytes]:
    response = await pool.request(settings or UpstreamSettings(read_timeout=2), "POST", url + "/v1/responses",
                                  [("Content-Type", "application/json")], b'{"model":"m"}')
    parts: list[bytes] = []
    await response.stream(parts.append)
    response.release()
    return response.status, b"".join(parts)


@run
async def test_keep_alive_reuses_one_connection_and_a_stale_one_is_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while True:
            await read_request(reader)
            if index == 0 and seen[0] == 2:
                return  # the third request on the first connection: closed without an answer, as a server timing out
            seen[0] += 1
            writer.write(SSE + chunk(b"data: {}\n\n") + b"0\r\n\r\n")
            await writer.drain()

    seen = [0]
    pool = UpstreamPool()
    async with server(handler) as (url, connections):
        for _ in range(2):
            assert await body_of(pool, url) == (200, b"data: {}\n\n")
        assert len(connections) == 1
        assert await body_of(pool, url) == (200, b"data: {}\n\n")  # retried once on a new connection
        assert len(connections) == 2
    await pool.aclose()


@run
async def test_head_and_mid_stream_silence_time_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        if index == 1:
            writer.write(SSE + chunk(b"data: {}\n\n"))
            await writer.drain()
        await asyncio.sleep(5)

    pool = UpstreamPool()
    settings = UpstreamSettings(read_timeout=0.5)
    async with server(handler) as (url, _):
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout, match="response head"):
            await body_of(pool, url, settings)
        with pytest.raises(UpstreamTimeout, match="next body bytes"):
            await body_of(pool, url, settings)
        assert asyncio.get_running_loop().time() - started < 2.5
    await pool.aclose()


@run
async def test_refused_broken_and_invalid_upstreams() -> None:
    pool = UpstreamPool()
    with pytest.raises(UpstreamError, match="could not connect"):
        await body_of(pool, f"http://127.0.0.1:{free_port()}")

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(SSE + chunk(b"data: {}\n\n") if index == 0 else b"SSH-2.0-not-http\r\n\r\n")
        await writer.drain()

    async with server(broken) as (url, _):
        with pytest.raises(UpstreamError, match="before the end of the response"):
            await body_of(pool, url)
        with pytest.raises(UpstreamError, match="invalid response"):
            await body_of(pool, url)
    await pool.aclose()


@run
async def test_a_paused_response_stops_reading_and_is_not_silence() -> None:
    """Back-pressure: while paused, the socket is not read (the server's writes block) and no timeout fires."""
    big = b"data: " + b"x" * 65536 + b"\n\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(SSE)
        for _ in range(200):
            writer.write(chunk(big))
            await writer.drain()
            sent[0] += 1
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    sent = [0]
    pool = UpstreamPool()
    async with server(handler) as (url, _):
        response = await pool.request(UpstreamSettings(read_timeout=0.5), "POST", url + "/", [], b"")
        got = [0]

        def sink(data: bytes) -> None:
            if not got[0]:
                response.pause()  # as the relay does when the client falls behind
            got[0] += len(data)

        done = response.stream(sink)
        await asyncio.sleep(1.2)  # longer than read_timeout
        assert sent[0] < 100, "the server could write everything: the client kept reading while paused"
        assert not done.done()
        response.resume()
        await asyncio.wait_for(done, 10)
        assert got[0] == 200 * len(big)
        response.release()
    await pool.aclose()


@pytest.fixture(scope="module")
def next_proxy(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    """A real mitmdump in regular mode (no addon) that requires proxy authentication."""
    tmp = tmp_path_factory.mktemp("next-proxy")
    port = free_port()
    proc = start_process([str(mitmdump_binary()), "--listen-host", "127.0.0.1", "--listen-port", str(port),
                          "--set", f"confdir={tmp}", "--set", "proxyauth=u:secret", "--set", "ssl_insecure=true"],
                         port, tmp / "mitmdump.log")
    yield port, tmp / "mitmproxy-ca-cert.pem"
    proc.stop()


@pytest.mark.parametrize("tls", [False, True], ids=["absolute-form", "connect"])
@run
async def test_through_the_next_proxy(tls: bool, tmp_path: Path, next_proxy: tuple[int, Path]) -> None:
    port, proxy_ca = next_proxy
    flags: list[str] = []
    if tls:
        certs = make_certs(tmp_path / "certs")
        flags = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    upstream = start_upstream(tmp_path, *flags)
    base = f"{'https' if tls else 'http'}://127.0.0.1:{upstream.port}"
    proxy = f"http://127.0.0.1:{port}"
    ca = str(proxy_ca) if tls else None  # the next proxy intercepts TLS with its own CA
    pool = UpstreamPool()
    try:
        status, body = await body_of(pool, base, UpstreamSettings(proxy=proxy, proxy_auth="u:secret", trusted_ca=ca))
        assert status == 200 and b"response.completed" in body
        wrong = UpstreamSettings(proxy=proxy, proxy_auth="u:wrong", trusted_ca=ca)
        if tls:
            with pytest.raises(UpstreamError, match="refused CONNECT"):
                await body_of(pool, base, wrong)
        else:
            assert (await body_of(pool, base, wrong))[0] == 407  # the request went to the proxy, not around it
    finally:
        await pool.aclose()
        upstream.stop()
