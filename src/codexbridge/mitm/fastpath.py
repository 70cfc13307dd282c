"""A listener of our own for bridged upgrades: at the reverse-mode listen socket, a new connection whose first request
is an upgrade the bridge would answer is served here (its hooks, the 101, then codexbridge's WebSocket layer driven
by a small connection handler of our own); every other connection goes to mitmproxy's own handler untouched.

Why: mitmproxy's per-connection machinery (next-layer decision, HTTP layers, a task and a locked layer pass per
hook, a watchdog task) cost ~3 ms of CPU per connection, the floor under any connection storm; a bridged upgrade
needs none of it. The same hooks run in the same order (requestheaders, request, responseheaders, response,
websocket_start, websocket_message when asked for, websocket_end; client_connected and client_disconnected), with
the same flow, so the bridge session, keepalive, recorder, metrics, mitmweb and -w files see what they saw before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import connection, ctx, flow, http
from mitmproxy.net.http import http1, url
from mitmproxy.proxy import commands, events, mode_servers, mode_specs, server, server_hooks
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers import websocket as ws_layers
from mitmproxy.websocket import WebSocketData

from codexbridge.mitm import dispatch
from codexbridge.mitm.messages import upgrade_request

log = logging.getLogger("codexbridge.mitm")
mitmproxy_log = logging.getLogger(server.__name__)  # the connection lines mitmproxy's own handler logs

HEAD_LIMIT = 64 * 1024  # a longer request head goes to mitmproxy, which answers it as it always does
HEAD_WAIT = 1.0  # seconds: a client slower than this to send its request head goes to mitmproxy
_LINES = re.compile(rb"\r?\n")
TLS_HANDSHAKE_RECORD = b"\x16"  # a TLS client's first byte

Decide = Callable[[http.HTTPFlow], bool]
TakeTls = Callable[["Handler", mode_specs.ReverseMode, asyncio.StreamReader], Awaitable["FastConnection | None"]]


class _Taking:
    """What the bridge addon said it takes: the Codex path (for a cheap look at the request line) and its decision
    on a parsed request (None: the fast path is off)."""

    path: bytes = b""
    decide: Decide | None = None
    tls: TakeTls | None = None  # fast_tls.take, which registers itself (it builds on this module)
    taken = 0  # connections served here (for tests and logs)


taking = _Taking()
_stock: dict[str, Any] = {}


def take_upgrades(path: str, decide: Decide | None) -> None:
    """From now on, new connections to a reverse-mode listener whose first request is a GET upgrade on `path` for
    which `decide(flow)` is true are served here; None sends every connection to mitmproxy."""
    taking.path = path.rstrip("/").encode()
    taking.decide = decide


class Handler(mode_servers.ProxyConnectionHandler):
    """mitmproxy's connection handler (mode_servers makes one per new connection), which first looks at the
    connection's first request head: a bridged upgrade is served by a FastConnection, anything else by mitmproxy's
    own code, as before."""

    fast: FastConnection | None = None

    _handed_back = False  # a FastConnection gave the connection back: its client_connected hook has run

    async def handle_client(self) -> None:
        fast = await _take(self)
        if fast is None:
            return await super().handle_client()
        if fast is CLOSED_AT_ONCE:
            return await self._closed_at_once()
        self.fast = fast
        if await fast.serve():
            return
        self.fast = None  # not a bridged upgrade after all (over TLS, seen only once decrypted): mitmproxy's own
        self._handed_back = True  # handler carries on from the layers the FastConnection left (fast_tls.py)
        await super().handle_client()

    async def handle_hook(self, hook: commands.StartHook) -> None:
        if self._handed_back and isinstance(hook, server_hooks.ClientConnectedHook):
            return  # (it ran when the connection was accepted, before the FastConnection gave it back)
        await super().handle_hook(hook)

    def log(self, message: str, *args: Any, **kwargs: Any) -> None:
        if self._handed_back and message == "client connect":
            return  # (logged when the connection was accepted)
        super().log(message, *args, **kwargs)

    async def _closed_at_once(self) -> None:
        """A client that closed before sending a byte (a port probe): what mitmproxy's handler does for it (its own
        code would read that end of stream before it is ready for it, the fast path having waited for the bytes)."""
        peer = {"client": self.client.peername}
        mitmproxy_log.info("client connect", extra=peer)
        await self.handle_hook(server_hooks.ClientConnectedHook(self.client))
        writer = self.transports.pop(self.client).writer
        if writer is not None:
            writer.close()
        mitmproxy_log.info("client disconnect", extra=peer)
        self.client.timestamp_end = time.time()
        await self.handle_hook(server_hooks.ClientDisconnectedHook(self.client))

    async def server_event(self, event: events.Event) -> None:
        fast = self.fast
        if fast is not None:
            return await fast.server_event(event)
        await super().server_event(event)
        done = self.__dict__.get("_completed")
        while done:  # hooks that completed inside that event: fed on now, in this loop turn
            await super().server_event(events.HookCompleted(done.pop(0)))

    async def hook_task(self, hook: commands.StartHook) -> None:
        """mitmproxy's hook task, which its eager task factory runs at once, inside the server_event that started
        it: a hook done without waiting would otherwise wait for that event's lock and go on a loop turn later,
        one turn per hook (~10 for an upgrade over TLS, each as long as the loop's other work under load).
        Not before the running hook: a connection accepted while mitmproxy still starts would reach addons not
        configured yet (tlsconfig's request hook then fails, and mitmdump exits on that startup error)."""
        await self.handle_hook(hook)
        if not hook.blocking:
            return
        if self._server_event_lock.locked() and _started():  # (the lock is only held without an await: this runs
            # inside that server_event)
            self.__dict__.setdefault("_completed", []).append(hook)
            return
        await self.server_event(events.HookCompleted(hook))


CLOSED_AT_ONCE: Any = object()


def _started() -> bool:
    proxyserver = ctx.master.addons.get("proxyserver")
    return bool(getattr(proxyserver, "is_running", True))


async def _take(handler: Handler) -> FastConnection | None:
    """The FastConnection for this connection when its first request is a bridged upgrade (its head is then
    consumed); None, with nothing consumed, for anything else."""
    decide = taking.decide
    mode = handler.client.proxy_mode
    io = handler.transports.get(handler.client)
    reader = io.reader if io is not None else None
    if (decide is None or not isinstance(reader, asyncio.StreamReader) or not isinstance(mode, mode_specs.ReverseMode)
            or mode.scheme not in ("http", "https") or not _started()):
        return None  # (until mitmproxy has started, its own handler serves: an error logged before then stops mitmdump)
    head = await _peek_head(reader)
    if head is None and reader.at_eof() and not reader._buffer:  # type: ignore[attr-defined]  # (checked at load)
        return CLOSED_AT_ONCE
    if head is None and reader._buffer[:1] == TLS_HANDSHAKE_RECORD and taking.tls is not None:  # type: ignore[attr-defined]  # (checked at load)
        return await taking.tls(handler, mode, reader)
    flow_ = bridged_flow(handler, mode, head, decide) if head is not None else None
    if head is None or flow_ is None:
        return None
    await reader.readexactly(len(head))  # at once: the bytes are in the buffer
    fast = FastConnection(handler, mode, flow_)
    taking.taken += 1
    log.debug("stage=fast_path client=%s: a bridged upgrade, served by codexbridge's listener", handler.client.peername)
    return fast


def bridged_flow(handler: Handler, mode: mode_specs.ReverseMode, head: bytes, decide: Decide) -> http.HTTPFlow | None:
    """The flow of a request head the bridge would answer with its 101; None for any other."""
    request = _bridged_request(head, mode)
    if request is None:
        return None
    flow_ = http.HTTPFlow(handler.client, handler.layer.context.server, live=True)  # (nothing of the handler's is changed yet)
    flow_.request = request
    try:
        if decide(flow_):
            return flow_
    except Exception:  # the bridge decides again in its request hook (and logs what fails there)
        log.exception("stage=bridge_error client=%s: the fast path's decision failed; mitmproxy serves it",
                      handler.client.peername)
    return None


def whole_head(buffer: bytes | bytearray) -> bytes:
    """The GET request head at the start of `buffer` when it is there whole; b"" when it is not (yet)."""
    if buffer[:4] == b"GET " and (end := buffer.find(b"\r\n\r\n")) >= 0:
        return bytes(buffer[:end + 4])
    return b""


def may_become_head(buffer: bytes | bytearray) -> bool:
    """Whether more bytes could still make `buffer` a whole GET head within HEAD_LIMIT."""
    return buffer[:4] == b"GET "[:len(buffer)] and len(buffer) <= HEAD_LIMIT


async def _peek_head(reader: asyncio.StreamReader) -> bytes | None:
    """The request head at the start of the reader's buffer, left there; None as soon as the first bytes are not a
    GET, or when the head does not come complete within HEAD_LIMIT bytes and HEAD_WAIT seconds."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]  # asyncio's buffer, read in place (checked at load)
    try:
        if not buffer:
            read_now(reader)
    except (RuntimeError, OSError):
        return None
    if head := whole_head(buffer):
        return head  # the usual case (the head came with the connection): no timer to set
    try:
        async with asyncio.timeout(HEAD_WAIT):
            while True:
                if head := whole_head(buffer):
                    return head
                if not may_become_head(buffer) or reader.at_eof():
                    return None
                if not buffer and read_now(reader):
                    continue
                await wait_for_bytes(reader)
    except (TimeoutError, RuntimeError, OSError):
        return None


class _WakeNow:
    """A future the reader's feed_data completes, as asyncio's own wait would, except that the waiting task resumes
    inside that call (in the socket's callback) instead of a loop turn later: before the 101, each of a TLS client's
    flights would otherwise wait for the rest of a loop turn, as long as the loop's other work under load.

    Future-like by asyncio's protocol (_asyncio_future_blocking, get_loop, add_done_callback, result, cancel), so a
    task awaits it as it awaits any future. Inside a running task (a reader fed from one) it wakes as a future does."""

    __slots__ = ("_asyncio_future_blocking", "_loop", "_callbacks", "_state", "_error")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._asyncio_future_blocking = False
        self._loop = loop
        self._callbacks: list[tuple[Callable[[Any], object], Any]] = []
        self._state = "pending"  # pending, done, cancelled
        self._error: BaseException | None = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def done(self) -> bool:
        return self._state != "pending"

    def cancelled(self) -> bool:
        return self._state == "cancelled"

    def add_done_callback(self, fn: Callable[[Any], object], *, context: Any = None) -> None:
        if self._state != "pending":
            self._loop.call_soon(fn, self, context=context)
        else:
            self._callbacks.append((fn, context))

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        before = len(self._callbacks)
        self._callbacks = [(f, c) for f, c in self._callbacks if f != fn]
        return before - len(self._callbacks)

    def result(self) -> None:
        if self._state == "cancelled":
            raise asyncio.CancelledError
        if self._error is not None:
            raise self._error

    def exception(self) -> BaseException | None:
        return self._error

    def set_result(self, _: object) -> None:
        self._finish("done", now=asyncio.current_task(self._loop) is None)

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._finish("done", now=False)

    def cancel(self, msg: object = None) -> bool:
        if self._state != "pending":
            return False
        self._finish("cancelled", now=False)
        return True

    def _finish(self, state: str, now: bool) -> None:
        if self._state != "pending":
            return
        self._state = state
        callbacks, self._callbacks = self._callbacks, []
        for fn, context in callbacks:
            if now:
                context.run(fn, self) if context is not None else fn(self)
            else:
                self._loop.call_soon(fn, self, context=context)

    def __await__(self) -> Any:
        if self._state == "pending":
            self._asyncio_future_blocking = True
            yield self
        return self.result()


async def wait_for_bytes(reader: asyncio.StreamReader) -> None:
    """StreamReader._wait_for_data (more bytes than the buffer holds, or the end), but the task resumes in the
    callback that fed them (see _WakeNow)."""
    r: Any = reader  # (its private fields: checked at load)
    if r._eof:
        return
    if r._waiter is not None:
        raise RuntimeError("wait_for_bytes() called while another coroutine is already waiting for incoming data")
    if r._paused:
        r._paused = False
        r._transport.resume_reading()
    r._waiter = _WakeNow(r._loop)
    try:
        await r._waiter
    finally:
        r._waiter = None


def read_now(reader: asyncio.StreamReader) -> bool:
    """Reads the socket now, as the loop would when it is readable: True when that brought bytes or the end.

    A new connection's first bytes are usually in the kernel already when its handler starts (the client sent its
    request right after connecting): read now, the upgrade is answered in this loop turn instead of two turns later,
    each as long as the loop's other work under load."""
    transport = reader._transport  # type: ignore[attr-defined]  # (checked at load)
    read_ready = getattr(transport, "_read_ready", None)
    if read_ready is None or transport.is_closing():
        return False
    read_ready()
    return bool(reader._buffer) or reader.at_eof()  # type: ignore[attr-defined]  # (checked at load)


def _shown(logger: logging.Logger, level: int) -> bool:
    """Whether a record at `level` from `logger` would reach a handler that takes that level: mitmproxy's per
    connection lines cost a record each (the caller's frame found, the time taken) even when `-q` drops them."""
    if not logger.isEnabledFor(level):
        return False
    current: logging.Logger | None = logger
    while current is not None:
        if any(level >= handler.level and dispatch.heard(handler) for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return logging.lastResort is not None and level >= logging.lastResort.level


def _bridged_request(head: bytes, mode: mode_specs.ReverseMode) -> http.Request | None:
    """The request as mitmproxy's reverse proxy would make it, if it is a GET upgrade on the Codex path (else None)."""
    line_end = head.find(b"\r\n")
    target = head[4:line_end].rpartition(b" ")[0]
    lower = head.lower()
    if target.partition(b"?")[0].rstrip(b"/") != taking.path or b"websocket" not in lower:
        return None
    request = _read_head(_LINES.split(head[:-4]))
    if request is None or ((b"transfer-encoding" in lower or b"content-length" in lower)  # (without either, a
                           and http1.expected_http_body_size(request) != 0):  # request has no body)
        return None
    scheme = mode.scheme
    host, port = mode.address
    request.data.host = host
    request.data.port = port
    request.scheme = scheme
    if not ctx.options.keep_host_header:
        request.host_header = url.hostport(scheme, host, port)
    return request


def _read_head(lines: list[bytes]) -> http.Request | None:
    """What mitmproxy's http1.read_request_head makes of a plain origin-form GET head; None for anything less plain
    (a continued or malformed header line, another method, form or version), which mitmproxy then reads itself."""
    try:
        method, target, version = lines[0].split()
    except ValueError:
        return None
    if method != b"GET" or not target.startswith(b"/") or version != b"HTTP/1.1":
        return None
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or line[:1] in (b" ", b"\t"):
            return None
        fields.append((name, value.strip()))
    return upgrade_request(method, target, http.Headers(fields), time.time())


class _Watchdog:
    """mitmproxy's inactivity timeout (tcp_timeout) for one connection, on one timer instead of a task."""

    def __init__(self, timeout: float, on_timeout: Callable[[], None]) -> None:
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.blocker = 0
        self.last_activity = time.time()
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(timeout, self._check)

    def register_activity(self) -> None:
        self.last_activity = time.time()

    def _check(self) -> None:
        left = self.last_activity + self.timeout - time.time()
        if self.blocker or left > 0:
            self._timer = asyncio.get_running_loop().call_later(max(left, 1.0), self._check)
            return
        self._timer = None
        self.on_timeout()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class FastConnection:
    """One bridged connection, served without mitmproxy's layers, tasks and locks. Where codexbridge and mitmproxy
    reach the connection's handler (proxyserver.connections: the outbox, inject.websocket), they find mitmproxy's
    handler with this one's watchdog, and its server_event comes here."""

    def __init__(self, handler: Handler, mode: mode_specs.ReverseMode, flow_: http.HTTPFlow | None) -> None:
        self.handler = handler
        self.mode = mode
        self.client = handler.client
        self.context = context = handler.layer.context  # the connection's context (its layers are never run)
        context.layers = []
        self.context.server.address = mode.address
        if mode.scheme == "https":  # as mitmproxy's reverse proxy and server TLS layers set it up
            self.context.server.tls = True
            if not ctx.options.keep_host_header:
                self.context.server.sni = mode.address[0]
        io = handler.transports[self.client]
        self.writer: asyncio.StreamWriter = io.writer  # type: ignore[assignment]  # (a TCP listener's stream)
        self.reader: asyncio.StreamReader = io.reader  # type: ignore[assignment]
        self.flow: http.HTTPFlow = flow_  # type: ignore[assignment]  # (over TLS: made once the request is decrypted)
        self.layer: Any = None

    async def serve(self) -> bool:
        """Serves the connection to its end; False when it turned out not to be a bridged upgrade and was given back
        to mitmproxy's handler (only over TLS, before any request hook ran)."""
        self.timeout_watchdog = self.handler.timeout_watchdog = _Watchdog(  # type: ignore[assignment]  # the same interface
            ctx.options.tcp_timeout, self._timed_out)
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        peer = {"client": self.client.peername}
        shown = _shown(mitmproxy_log, logging.INFO)
        if shown:
            mitmproxy_log.info("client connect", extra=peer)
        handed_back = False
        try:
            await self._hook(server_hooks.ClientConnectedHook(self.client))
            if self.client.error:
                self._close()
            else:
                begun = await self._begin()
                if begun is None:
                    handed_back = True
                    self.timeout_watchdog.cancel()
                    # (a new one: keeping mitmproxy's own for the connection's life cost ~1 KB per session)
                    self.handler.timeout_watchdog = server.TimeoutWatchdog(ctx.options.tcp_timeout,
                                                                          self.handler.on_timeout)
                    return False
                if begun and await self._answer():
                    await self._read()
        finally:
            if not handed_back:
                await self._end(shown, peer)
        return True

    async def _begin(self) -> bool | None:
        """What comes before the upgrade's hooks: True to go on, False when the connection is done, None to give it
        back to mitmproxy (a TLS connection's request, decrypted, is not a bridged upgrade)."""
        return True

    async def _end(self, shown: bool, peer: dict[str, Any]) -> None:
        self.timeout_watchdog.cancel()
        with contextlib.suppress(OSError):
            self.writer.close()
        self.handler.transports.pop(self.client, None)
        self.client.state = connection.ConnectionState.CLOSED
        if shown:
            mitmproxy_log.info("client disconnect", extra=peer)
        self.client.timestamp_end = time.time()
        await self._hook(server_hooks.ClientDisconnectedHook(self.client))

    async def _answer(self) -> bool:
        """The upgrade's hooks and answer, as mitmproxy's HTTP layer runs them for a response set by an addon;
        True when the WebSocket layer took over."""
        f = self.flow
        f.request.timestamp_end = time.time()
        for hook in (http_layers.HttpRequestHeadersHook(f), http_layers.HttpRequestHook(f)):
            await self._hook(hook)
            if await self._killed():
                return False
        self._response().timestamp_start = time.time()
        await self._hook(http_layers.HttpResponseHeadersHook(f))
        if await self._killed():
            return False
        response = self._response()
        response.timestamp_end = time.time()
        if (response.status_code == 101 and response.headers.get("upgrade", "").lower() == "websocket"
                and f.request.headers.get("sec-websocket-version", "") == "13" and ctx.options.websocket):
            f.websocket = WebSocketData()  # before the response hook, so that addons see a WebSocket follows
        await self._hook(http_layers.HttpResponseHook(f))
        if await self._killed():
            return False
        response = self._response()
        self._send(http1.assemble_response_head(response) + (response.raw_content or b""))
        if response.status_code != 101 or not f.websocket:
            # not the bridge's 101 (another addon answered or changed it): answered, then closed
            f.live = False
            self._close()
            return False
        self.layer = ws_layers.WebsocketLayer(self.context, f)  # codexbridge's layer (installed)
        await asyncio.sleep(0)  # the session starts a turn later: in a storm, the 101s of the connections accepted
        # with this one go out first (measured: p50 -6 to -12 % for 200 at once); its client cannot have answered yet
        await self.server_event(events.Start())
        return True

    def _response(self) -> http.Response:
        f = self.flow
        if f.response is None:  # an addon took the bridge's answer back: as unanswered as mitmproxy would leave it
            f.response = http.Response.make(502, b"codexbridge: the upgrade was left unanswered.\n")
        return f.response

    async def _killed(self) -> bool:
        f = self.flow
        if f.error is None or f.error.msg != flow.Error.KILLED_MESSAGE:
            return False
        await self._hook(http_layers.HttpErrorHook(f))
        f.live = False
        self._close()
        return True

    async def _read(self) -> None:
        """Reads the client until the end (mitmproxy's handle_connection for one connection); once the layer reads
        the socket itself (a DirectReader), this only waits for the end of the stream."""
        reader, writer = self.reader, self.writer
        while self.client.state & connection.ConnectionState.CAN_READ:
            try:
                data = await reader.read(65535)
            except OSError:
                break
            if not data or not await self._received(data):
                break
            try:
                await writer.drain()
            except OSError:
                break
        if self.client.state is not connection.ConnectionState.CLOSED:
            self.client.state &= ~connection.ConnectionState.CAN_READ
        await self.server_event(events.ConnectionClosed(self.client))
        if self.client.state & connection.ConnectionState.CAN_WRITE:
            await self._closed.wait()  # the layer still writes (its close handshake) until it closes the connection

    async def _received(self, data: bytes) -> bool:
        """The client's bytes to the layer; False at the end of the client's stream (over TLS: its close_notify)."""
        await self.server_event(events.DataReceived(self.client, data))
        return True

    def _send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def server_event(self, event: events.Event) -> None:
        """mitmproxy's server_event for one connection: the layer's commands carried out in order, no await among
        them; its hooks run after (the layer waits for their completion)."""
        hooks: list[commands.StartHook] = []
        async with self._lock:
            self.timeout_watchdog.register_activity()
            try:
                for command in self.layer.handle_event(event):
                    if isinstance(command, commands.SendData):
                        if command.connection is self.client:
                            self._send(command.data)
                    elif isinstance(command, commands.CloseConnection):
                        if command.connection is self.client:
                            self._close()
                    elif isinstance(command, commands.StartHook):
                        hooks.append(command)
                    elif isinstance(command, commands.Log):
                        mitmproxy_log.log(command.level, command.message, extra={"client": self.client.peername})
                    elif isinstance(command, commands.ConnectionCommand) and command.connection is not self.client:
                        pass  # the bridged flow's server connection is never opened
                    else:
                        raise RuntimeError(f"Unexpected command: {command}")
            except Exception:
                log.exception("stage=bridge_error client=%s: the connection's layer failed", self.client.peername)
        for hook in hooks:
            await self._hook(hook)
            if hook.blocking:
                await self.server_event(events.HookCompleted(hook))

    async def _hook(self, hook: commands.StartHook) -> None:
        watchdog = self.timeout_watchdog
        watchdog.blocker += 1
        try:
            (data,) = hook.args()
            await ctx.master.addons.handle_lifecycle(hook)
            if isinstance(data, flow.Flow):
                await data.wait_for_resume()
        finally:
            watchdog.blocker -= 1
            watchdog.register_activity()

    def _close(self) -> None:
        self.client.state = connection.ConnectionState.CLOSED
        self._closed.set()
        with contextlib.suppress(OSError):
            self.writer.close()  # what is buffered still goes out first
        self.reader.feed_eof()  # ends the read loop, like mitmproxy's cancel of its reader task

    def _timed_out(self) -> None:
        mitmproxy_log.info(f"Closing connection due to inactivity: {self.client}", extra={"client": self.client.peername})
        self.reader.feed_eof()  # the layer sees the end of the stream, as with mitmproxy's cancel


def install() -> None:
    """Idempotent: mitmproxy makes a Handler for each new connection from now on (also on the listeners it opened
    before: it looks the class up per connection)."""
    if "handler" not in _stock:
        _stock["handler"] = mode_servers.ProxyConnectionHandler
        mode_servers.ProxyConnectionHandler = Handler  # type: ignore[misc]  # replacing mitmproxy's handler class is how the fast path is installed (checked at load)


def uninstall() -> None:
    if "handler" in _stock:
        mode_servers.ProxyConnectionHandler = _stock.pop("handler")  # type: ignore[misc]  # replacing mitmproxy's handler class is how the fast path is installed (checked at load)
    taking.decide = None
