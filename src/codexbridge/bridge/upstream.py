"""The bridge's own HTTP/1.1 client toward the upstream: pooled connections, a body streamed to a callback.

Built on asyncio.Protocol so that each network read of an event stream is decoded and relayed in
the same callback, without the task switches and per-read layers of a general-purpose client.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from codexbridge.wire.http1 import ProtocolError, ResponseHead, ResponseParser, build_request

log = logging.getLogger("codexbridge.bridge.upstream")


class UpstreamError(Exception):
    """The upstream could not be reached, or its connection broke."""


class UpstreamTimeout(UpstreamError):
    """The upstream was silent for longer than allowed."""


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """How to reach upstreams; mirrors the mitmproxy options that govern its own server side."""

    ssl_insecure: bool = False
    trusted_ca: str | None = None  # ssl_verify_upstream_trusted_ca: a PEM file
    trusted_confdir: str | None = None  # ssl_verify_upstream_trusted_confdir: a c_rehash folder
    proxy: str | None = None  # from --mode upstream:URL
    proxy_auth: str | None = None  # mitmproxy's upstream_auth, user:password
    connect_timeout: float = 10.0
    read_timeout: float = 300.0


def ssl_context(settings: UpstreamSettings) -> ssl.SSLContext:
    if settings.ssl_insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=settings.trusted_ca, capath=settings.trusted_confdir)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> tuple[Origin, str]:
        """The origin of an absolute URL, and the request target (path and query) on it."""
        known = _parsed.get(url)
        if known is None:
            known = cls._parse(url)
            if len(_parsed) > 1024:
                _parsed.clear()
            _parsed[url] = known
        return known

    @classmethod
    def _parse(cls, url: str) -> tuple[Origin, str]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return cls(scheme, parts.hostname, port), target

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.scheme == "https" else 80) else f"{host}:{self.port}"


_parsed: dict[str, tuple[Origin, str]] = {}
Sink = Callable[[bytes], None]
HeadCallback = Callable[[ResponseHead, "Connection"], "Sink | None"]


class Connection(asyncio.Protocol):
    """One upstream connection; serves one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[Origin, UpstreamSettings]) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0
        self._parser: ResponseParser | None = None
        self._head: asyncio.Future[ResponseHead] | None = None
        self._done: asyncio.Future[None] | None = None
        self._early: list[bytes] = []  # body bytes that came with the head, before a sink
        self._sink: Sink | None = None
        self._got_bytes = False
        self._last = 0.0
        self._silence = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._on_head: HeadCallback | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio passes the stream Transport it made; the protocol API types it as BaseTransport

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes on an idle connection: it can no longer be trusted
            self.close()
            return
        self._got_bytes = True
        self._last = self.loop.time()
        try:
            body = parser.feed(data)
        except ProtocolError as e:
            self._fail(UpstreamError(f"invalid response: {e}"))
            return
        head = self._head
        if head is not None:
            if parser.head is None:
                return
            self._head = None
            if not head.done():
                head.set_result(parser.head)
            on_head, self._on_head = self._on_head, None
            if on_head is not None:
                self._sink = on_head(parser.head, self)  # the body can flow before the waiting task wakes up
        if body:
            sink = self._sink
            if sink is None:
                self._early.append(body)
            else:
                try:
                    sink(body)
                except Exception as e:  # noqa: BLE001 - the relay's own failure, whatever it is: reported to the awaiting task
                    self._fail(e)
                    return
        if parser.done:
            self._complete()

    def eof_received(self) -> bool:
        parser = self._parser
        if parser is not None:
            try:
                tail = parser.eof()
            except ProtocolError as e:
                self._fail(UpstreamError(str(e)), retryable=not self._got_bytes)
                return False
            if tail:
                if self._sink is not None:
                    self._sink(tail)
                else:
                    self._early.append(tail)
            self._complete()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self._parser is not None and not self._parser.done:
            why = f"connection lost: {exc!r}" if exc else "connection closed before the end of the response"
            self._fail(UpstreamError(why), retryable=not self._got_bytes)

    # -- one exchange -------------------------------------------------------------------------

    def start(self, request: bytes, silence: float, expect_body: bool = True,
              on_head: HeadCallback | None = None, keep_pieces: bool = False) -> asyncio.Future[ResponseHead]:
        """Sends a request; the future resolves with the response head. `on_head`, called as soon as the
        head is parsed, may return a sink that then receives the body from its first byte."""
        assert self.transport is not None and self._parser is None
        self.requests += 1
        self._parser = ResponseParser(expect_body, keep_pieces)
        self._early = []
        self._sink = None
        self._on_head = on_head
        self._got_bytes = False
        self._head = self.loop.create_future()
        self._head.add_done_callback(_consume)
        self._done = self.loop.create_future()
        self._done.add_done_callback(_consume)
        self._silence = silence
        self._last = self.loop.time()
        if self._timer is None:  # a timer left from the previous exchange re-arms itself for this one
            self._arm(self._last + silence)
        self.transport.write(request)
        return self._head

    def stream(self, sink: Sink) -> asyncio.Future[None]:
        """Delivers the body to `sink` as it arrives (first what came with the head); the future
        resolves at the end of the body or fails with UpstreamError/UpstreamTimeout."""
        assert self._done is not None
        if self._sink is sink:
            return self._done
        early, self._early = self._early, []
        for chunk in early:
            sink(chunk)
        self._sink = sink
        return self._done

    @property
    def reusable(self) -> bool:
        return (not self.closed and self._parser is not None and self._parser.done and self._parser.keep_alive
                and not self._parser.surplus and not self._paused)

    def pause(self) -> None:
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self._paused:
            self._paused = False
            self._last = self.loop.time()  # a client slower than the upstream is not upstream silence
            if not self.closed:
                self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    @property
    def pieces(self) -> list[bytes]:
        """With keep_pieces: the body bytes of the last network read as the upstream framed them."""
        parser = self._parser
        return (parser.pieces or []) if parser is not None else []

    def reset(self) -> None:
        """Ready for the next request on the same connection (a pending silence timer finds nothing to do)."""
        self._parser = None
        self._sink = None
        self._on_head = None
        self._early = []

    # -- internals ----------------------------------------------------------------------------

    def _complete(self) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    def _fail(self, error: Exception, retryable: bool = False) -> None:
        if isinstance(error, UpstreamError):
            error.retryable = retryable  # type: ignore[attr-defined]  # a marker attribute on the exception, read by the retry logic
        self._cancel_timer()
        for fut in (self._head, self._done):
            if fut is not None and not fut.done():
                fut.set_exception(error)
        self._head = None
        if self._parser is not None and not self._parser.done:
            self._parser = None
        self.close()

    def _arm(self, when: float) -> None:
        self._timer = self.loop.call_at(when, self._check_silence)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_silence(self) -> None:
        # One timer per connection, re-armed lazily: data_received only notes the time.
        self._timer = None
        if self._parser is None or self._parser.done:
            return
        if self._paused:
            self._arm(self.loop.time() + self._silence)
            return
        due = self._last + self._silence
        if self.loop.time() >= due - 0.001:
            what = "response head" if self._head is not None else "next body bytes"
            self._fail(UpstreamTimeout(f"no {what} from the upstream in {self._silence:g} s"))
        else:
            self._arm(due)


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # a failure nobody awaited is not "never retrieved"


class Exchange:
    """One request: its bytes, and the connection and head future once it was written."""

    __slots__ = ("origin", "settings", "raw", "on_head", "keep_pieces", "conn", "head", "reused")

    def __init__(self, origin: Origin, settings: UpstreamSettings, raw: bytes, on_head: HeadCallback | None,
                 keep_pieces: bool) -> None:
        self.origin = origin
        self.settings = settings
        self.raw = raw
        self.on_head = on_head
        self.keep_pieces = keep_pieces
        self.conn: Connection | None = None
        self.head: asyncio.Future[ResponseHead] | None = None
        self.reused = False

    def start(self, conn: Connection, reused: bool) -> None:
        self.conn, self.reused = conn, reused
        self.head = conn.start(self.raw, self.settings.read_timeout, on_head=self.on_head, keep_pieces=self.keep_pieces)


class UpstreamResponse:
    """A response whose head has arrived; its body is streamed or read, then it is released."""

    def __init__(self, pool: UpstreamPool, conn: Connection, head: ResponseHead) -> None:
        self.head = head
        self.status = head.status
        self.headers = head.headers
        self._pool = pool
        self._conn = conn
        self._released = False

    @property
    def connection(self) -> Connection:
        return self._conn

    def stream(self, sink: Sink) -> asyncio.Future[None]:
        return self._conn.stream(sink)

    async def read(self, limit: int) -> bytes:
        """The body, up to about `limit` bytes (the connection is not reused when it was longer)."""
        parts: list[bytes] = []
        size = 0

        def sink(chunk: bytes) -> None:
            nonlocal size
            parts.append(chunk)
            size += len(chunk)
            if size > limit and not done.done():
                done.set_result(None)

        done = self._conn.stream(sink)
        await done
        return b"".join(parts)

    def pause(self) -> None:
        self._conn.pause()

    def resume(self) -> None:
        self._conn.resume()

    def release(self) -> None:
        """Back to the pool when the exchange ended cleanly; closed otherwise."""
        if self._released:
            return
        self._released = True
        self._pool.release(self._conn)


class UpstreamPool:
    """Keep-alive connections per origin and settings (LIFO, O(1) per request), closed together."""

    def __init__(self, max_idle_per_origin: int = 256, idle_expiry: float = 60.0) -> None:
        self.max_idle = max_idle_per_origin
        self.idle_expiry = idle_expiry
        self._idle: dict[tuple[Origin, UpstreamSettings], list[Connection]] = {}
        self._live: set[Connection] = set()
        self._contexts: dict[UpstreamSettings, ssl.SSLContext] = {}

    def send(self, settings: UpstreamSettings, method: str, url: str, headers: list[tuple[str, str]], body: bytes,
             on_head: HeadCallback | None = None, keep_pieces: bool = False) -> Exchange:
        """Builds a request and, when a kept-alive connection is idle, writes it right away, before any
        await; `response()` then waits for its head. Raises UpstreamError for a URL it cannot serve.

        `on_head` is called from the connection's callback the moment the head is parsed; a sink it
        returns gets the body without waiting for the caller's task to wake up."""
        origin, target = Origin.of(url)
        if settings.proxy is not None and origin.scheme == "http":
            target = f"http://{origin.authority}{target}"  # absolute-form through the next proxy
            headers = headers + self._proxy_auth(settings)
        exchange = Exchange(origin, settings, build_request(method, target, origin.authority, headers, body),
                            on_head, keep_pieces)
        conn = self._idle_connection(origin, settings)
        if conn is not None:
            exchange.start(conn, reused=True)
        return exchange

    async def response(self, exchange: Exchange) -> UpstreamResponse:
        """The response head of a sent exchange (connecting first if none was idle); a kept-alive connection
        that turns out closed before any answer is replaced once. Raises UpstreamError."""
        for attempt in (1, 2):
            if exchange.conn is None:
                exchange.start(await self._connect(exchange.origin, exchange.settings), reused=False)
            conn = exchange.conn
            assert conn is not None and exchange.head is not None
            try:
                head = await exchange.head
            except UpstreamError as e:
                self._drop(conn)
                if exchange.reused and attempt == 1 and getattr(e, "retryable", False):
                    log.debug("a kept-alive upstream connection was closed under us; retrying on a new one")
                    exchange.conn = None
                    continue
                raise
            except BaseException:
                self._drop(conn)
                raise
            return UpstreamResponse(self, conn, head)
        raise AssertionError("unreachable")

    async def request(self, settings: UpstreamSettings, method: str, url: str, headers: list[tuple[str, str]],
                      body: bytes, on_head: HeadCallback | None = None, keep_pieces: bool = False) -> UpstreamResponse:
        """send() and response() in one call."""
        return await self.response(self.send(settings, method, url, headers, body, on_head, keep_pieces))

    def _drop(self, conn: Connection) -> None:
        conn.close()
        self._live.discard(conn)

    def release(self, conn: Connection) -> None:
        if not conn.reusable:
            conn.close()
            self._live.discard(conn)
            return
        conn.reset()
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.close()
            self._live.discard(conn)
            return
        conn.idle_since = conn.loop.time()
        idle.append(conn)

    async def aclose(self) -> None:
        for conn in list(self._live):
            conn.close()
        self._live.clear()
        self._idle.clear()

    # -- connections --------------------------------------------------------------------------

    def _idle_connection(self, origin: Origin, settings: UpstreamSettings) -> Connection | None:
        idle = self._idle.get((origin, settings))
        if not idle:
            return None
        now = idle[-1].loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_expiry:
                return conn
            self._drop(conn)
        return None

    async def _connect(self, origin: Origin, settings: UpstreamSettings) -> Connection:
        loop = asyncio.get_running_loop()
        conn = Connection(loop, (origin, settings))
        try:
            await asyncio.wait_for(self._open(loop, conn, origin, settings), settings.connect_timeout)
        except TimeoutError:
            conn.close()
            raise UpstreamTimeout(f"could not connect to {origin.authority} in {settings.connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as e:
            conn.close()
            raise UpstreamError(f"could not connect to {origin.scheme}://{origin.authority}: {e}") from e
        except BaseException:
            conn.close()
            raise
        self._live.add(conn)
        return conn

    async def _open(self, loop: asyncio.AbstractEventLoop, conn: Connection, origin: Origin,
                    settings: UpstreamSettings) -> None:
        tls = self._context(settings) if origin.scheme == "https" else None
        if settings.proxy is None:
            await loop.create_connection(lambda: conn, origin.host, origin.port, ssl=tls,
                                         server_hostname=origin.host if tls else None)
            return
        proxy, _ = Origin.of(settings.proxy)
        proxy_tls = self._context(settings) if proxy.scheme == "https" else None
        transport, _ = await loop.create_connection(lambda: conn, proxy.host, proxy.port, ssl=proxy_tls,
                                                    server_hostname=proxy.host if proxy_tls else None)
        if tls is None:
            return  # plain http through a proxy: absolute-form requests on this connection
        host = f"[{origin.host}]" if ":" in origin.host else origin.host
        connect = build_request("CONNECT", f"{host}:{origin.port}", f"{host}:{origin.port}", self._proxy_auth(settings), None)
        head = await conn.start(connect, settings.connect_timeout, expect_body=False)
        conn.reset()
        if head.status != 200:
            raise OSError(f"the upstream proxy refused CONNECT {origin.authority}: HTTP {head.status} {head.reason}")
        conn.transport = await loop.start_tls(transport, conn, tls, server_hostname=origin.host)

    @staticmethod
    def _proxy_auth(settings: UpstreamSettings) -> list[tuple[str, str]]:
        if not settings.proxy_auth:
            return []
        token = base64.b64encode(settings.proxy_auth.encode()).decode()
        return [("Proxy-Authorization", f"Basic {token}")]

    def _context(self, settings: UpstreamSettings) -> ssl.SSLContext:
        ctx = self._contexts.get(settings)
        if ctx is None:
            ctx = self._contexts[settings] = ssl_context(settings)
        return ctx
