"""The WebSocket layer codexbridge installs in mitmproxy: the stock relay plus keepalive for relayed flows,
a local server for bridged ones, and the socket take-overs of the fast paths. Everything it sends to the
client goes through the flow's ClientOutbox."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import wsproto
import wsproto.events as wse
from mitmproxy import http
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import tls as tls_layers
from mitmproxy.proxy.layers import websocket as ws_layers
from mitmproxy.proxy.utils import expect
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from codexbridge.mitm import dispatch, fast_tls, fastpath, listen, tls
from codexbridge.mitm.channel import DirectReader, wsproto_idle
from codexbridge.mitm.keepalive_driver import KeepaliveDriver
from codexbridge.mitm.messages import BridgeInjected, placeholder_message, server_text
from codexbridge.mitm.outbox import ClientOutbox
from codexbridge.mitm.plans import BridgeHooks, FlowPlan, forget_flow
from codexbridge.responses.conversation import ClientFrameError
from codexbridge.responses.events import TERMINAL_EVENTS, event_type
from codexbridge.wire import wsread

log = logging.getLogger("codexbridge.mitm")

_stock_layer = ws_layers.WebsocketLayer
_T = TypeVar("_T")


class ClientWebsocket(ws_layers.WebsocketConnection):
    """The client side of a flow: what mitmproxy's own relay (passthrough) writes to it goes through the flow's
    outbox; pongs answering our pings are consumed here. (codexbridge's own frames go straight to the outbox.)"""

    keepalive: KeepaliveDriver | None = None
    outbox: ClientOutbox | None = None

    def send2(self, event: wse.Event) -> commands.SendData:
        data = self.send(event)
        outbox = self.outbox
        if outbox is not None:
            outbox.hold()
            outbox.send(forwarded=data, data_frames=int(isinstance(event, wse.Message)))
            data = outbox.take()
        return commands.SendData(self.conn, data)

    def events(self) -> Generator[wse.Event]:
        for ws_event in super().events():
            if isinstance(ws_event, wse.Pong) and self.keepalive is not None and self.keepalive.pong(bytes(ws_event.payload)):
                continue
            yield ws_event


class CodexWebsocketLayer(ws_layers.WebsocketLayer):
    """The stock relay, plus keepalive, for ordinary flows; a local server for bridged ones."""

    def __init__(self, context: Context, flow: http.HTTPFlow):
        super().__init__(context, flow)
        plan = forget_flow(flow)
        self.ours = plan is not None  # else: not a Codex session, stock behaviour
        self.plan = plan or FlowPlan(message_hook=True)
        self.hooks = self.plan.hooks
        self.recorder = self.plan.recorder
        self.outbox: ClientOutbox | None = self.plan.outbox  # bridged: made by the addon; relayed: at start
        self.keepalive: KeepaliveDriver | None = None
        self.client_gone = False
        self._incoming = 0
        self._frames_in = 0
        self._reader_tried = False
        self._server_reader_tried = False
        self._fast_server: wsread.FastReader | None = None
        self._server_aligned = True
        self._fast: wsread.FastReader | None = None
        self._started = time.monotonic()

    @expect(events.Start)
    def start(self, event: events.Event) -> layer.CommandGenerator[None]:
        if self.hooks is None:
            yield from _stock_layer.start(self, event)
            self.client_ws.__class__ = ClientWebsocket
        else:
            # The synthetic 101 negotiated no extension: frames are plain.
            self.client_ws = ClientWebsocket(wsproto.ConnectionType.SERVER, [], conn=self.context.client)
            self.server_ws = ws_layers.WebsocketConnection(wsproto.ConnectionType.CLIENT, [], conn=self.context.server)
            yield ws_layers.WebsocketStartHook(self.flow)
            self._handle_event = self.serve_bridged
        client_ws = self.client_ws
        assert isinstance(client_ws, ClientWebsocket)
        why = ""
        if self.outbox is None and self.ours:
            try:
                self.outbox = ClientOutbox(self.flow)
            except ValueError as e:
                why = str(e)
        outbox = self.outbox
        if outbox is not None:
            response = self.flow.response
            outbox.attach(client_ws, self.recorder,
                          extensions=bool(response and response.headers.get("sec-websocket-extensions")),
                          window=self.plan.flow_messages)
            outbox.meter = self.plan.meter
            client_ws.outbox = outbox
            if self.context.client.tls:
                self._lighter_tls(outbox)
        _lighter_queues(self.context.layers)
        policy = self.plan.keepalive
        if policy is not None and policy.enabled:
            if outbox is None:
                log.warning("stage=keepalive_unavailable client=%s reason=%s; relaying without keepalive",
                            self.context.client.peername, why)
            else:
                self.keepalive = client_ws.keepalive = KeepaliveDriver(outbox, policy, self.context.client.peername)
        if self.hooks is None:
            self._take_over_server_reading()

    _handle_event = start

    def _lighter_tls(self, outbox: ClientOutbox) -> None:
        """A client over TLS: the outbox encrypts with the client's TLS connection itself (see use_tls). (Its record
        buffers are released while idle from the handshake on: tls.py.)"""
        tls_layer = next((x for x in self.context.layers if isinstance(x, tls_layers.ClientTLSLayer)
                          and x.conn is self.context.client), None)
        connection = getattr(tls_layer, "tls", None) or fast_tls.clients.get(self.context.client.id)
        if connection is not None:
            outbox.use_tls(connection)
            tls.shed_bios(connection)  # what the handshake left in its memory BIOs

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        """mitmproxy's dispatch, with a net: an unexpected exception ends this session (a log line, 1011 to the
        client) instead of reaching mitmproxy's "crashed" handler, which would leave the connection hanging."""
        try:
            yield from super().handle_event(event)
        except Exception:  # whatever it is, it must not escape into mitmproxy
            log.exception("stage=bridge_error client=%s; closing the session with 1011", self.context.client.peername)
            self._paused = None
            self._handle_event = self._close_after_fault
            yield from super().handle_event(event)

    def _close_after_fault(self, event: events.Event) -> layer.CommandGenerator[None]:
        self._handle_event = self.done
        if not self.client_gone and self.outbox is not None:
            yield from self._close_client(1011, "codexbridge internal error")
        elif not self.client_gone:
            self.client_gone = True
            yield commands.CloseConnection(self.context.client)
        if self.hooks is None and getattr(self, "server_ws", None) is not None:
            yield from self._close_server()

    # -- passthrough ------------------------------------------------------------------------

    @expect(events.DataReceived, events.ConnectionClosed, ws_layers.WebSocketMessageInjected)
    def relay_messages(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, BridgeInjected):
            yield from self._injected(event)
            return
        if self.client_gone:
            if isinstance(event, events.ConnectionEvent) and event.connection == self.context.server:
                yield from self._drain_server(event)
            return
        gen = super().relay_messages(event)
        reply = None
        try:
            while True:
                command = gen.send(reply)
                if isinstance(command, ws_layers.WebsocketMessageHook):
                    self._observe(self.flow.websocket.messages[-1])  # type: ignore[union-attr]  # a WebSocket flow always has .websocket; mitmproxy types it Optional
                    if self.outbox is not None:
                        self.outbox.trim_messages()
                    if not self.plan.message_hook:
                        reply = None  # as if the hook ran: no pass over every addon per relayed message
                        continue
                reply = yield command
        except StopIteration:
            pass
        if isinstance(event, events.DataReceived) and event.connection == self.context.server:
            if self._fast_server is not None:
                # bytes the layers read (left after the 101, or handed over): the fast reader may resume
                # only at a frame boundary
                self._server_aligned = wsproto_idle(self.server_ws)
            elif not self._server_reader_tried and self._handle_event == self.relay_messages:
                self._take_over_server_reading()
        if self._handle_event == self.done:
            ws = self.flow.websocket
            if self.recorder is not None and ws is not None:
                self.recorder.close(ws.close_code or 1005, ws.close_reason or "",
                                    "client" if ws.closed_by_client else "upstream")
            self._record_complete()
            self._ended()

    def _observe(self, message: WebSocketMessage) -> None:
        """Counts client frames; tracks whether a response is in flight, for the text keepalive."""
        if message.from_client:
            self._frames_in += 1
        meter = self.plan.meter
        if meter is not None:
            if message.from_client:
                meter.client_frame(message.content)
            else:
                meter.server_event(message.content)
        if self.recorder is not None:
            if message.from_client:
                self.recorder.client_frame(message.content if not message.is_text else message.text)
            else:
                self.recorder.server_frame(message.content if not message.is_text else message.text)
        if not message.is_text or self.keepalive is None:
            return
        kind = event_type(message.content)
        if message.from_client and kind == "response.create":
            self.keepalive.response_started()
        elif not message.from_client and kind in TERMINAL_EVENTS:
            self.keepalive.response_ended()

    def _drain_server(self, event: events.ConnectionEvent) -> layer.CommandGenerator[None]:
        if isinstance(event, events.ConnectionClosed):
            self.server_ws.receive_data(None)
        else:
            self.server_ws.receive_data(event.data)  # type: ignore[attr-defined]  # the expect() decorator admits only DataReceived here
        for ws_event in self.server_ws.events():
            if isinstance(ws_event, wse.Message):
                data = ws_event.data.encode() if isinstance(ws_event.data, str) else ws_event.data
                if self.recorder is not None:
                    self.recorder.server_frame(data)
                if event_type(data) in TERMINAL_EVENTS:
                    log.info("stage=upstream_drained")
                    yield from self._close_server()
                    self._record_complete()
                    return
            if isinstance(ws_event, wse.CloseConnection):
                if self.recorder is not None:
                    self.recorder.close(ws_event.code, ws_event.reason or "", "upstream")
                yield from self._close_server()
                self._record_complete()
                return

    def _close_server(self) -> layer.CommandGenerator[None]:
        if self.server_ws.state in (wsproto.ConnectionState.OPEN, wsproto.ConnectionState.REMOTE_CLOSING):
            yield self.server_ws.send2(wse.CloseConnection(1001, "client gone"))
        yield commands.CloseConnection(self.context.server)
        self._handle_event = self.done

    # -- bridged ----------------------------------------------------------------------------

    @expect(events.DataReceived, events.ConnectionClosed, ws_layers.WebSocketMessageInjected)
    def serve_bridged(self, event: events.Event) -> layer.CommandGenerator[None]:
        hooks, outbox = self.hooks, self.outbox
        assert hooks is not None and outbox is not None
        if isinstance(event, BridgeInjected):
            yield from self._injected(event)
            return
        if isinstance(event, ws_layers.WebSocketMessageInjected):
            # inject.websocket from another addon: client-bound text goes out, the rest is ignored
            if not event.message.from_client:
                yield from self._in_turn(outbox.send, [event.message.content], True)
            return
        if event.connection != self.context.client:  # type: ignore[attr-defined]  # the expect() decorator admits only connection events here
            return  # a server connection opened eagerly by mitmproxy: never used for bridged flows
        self.client_ws.receive_data(event.data if isinstance(event, events.DataReceived) else None)
        for ws_event in self.client_ws.events():
            if isinstance(ws_event, wse.Message):
                yield from self._client_message(ws_event, hooks)
            elif isinstance(ws_event, wse.Ping):
                yield from self._in_turn(outbox.send, control=ws_event.response())
            elif isinstance(ws_event, wse.CloseConnection):
                yield from self._close_client(ws_event.code, ws_event.reason or "", by_client=True)
                return
        if not self._reader_tried and isinstance(event, events.DataReceived):
            self._take_over_reading()

    def _take_over_reading(self) -> None:
        """On a plain client connection, later bytes are read by a DirectReader: in the socket callback,
        without mitmproxy's reader task and layer pass. Done between two reads, so nothing is reordered."""
        outbox = self.outbox
        if outbox is None or not outbox.direct or self.plan.message_hook or self.client_gone:
            self._reader_tried = True
            return
        installed = self._install_reader(None, self.client_ws, self.direct_data)
        if installed is not False:  # False: mitmproxy still holds bytes or half a frame; try after its next read
            self._reader_tried = True
        if installed:  # nothing can be delivered before this line: the reader's callback runs on a later turn
            self._fast = wsread.FastReader(self.hooks.max_frame_bytes if self.hooks is not None else 0)

    def _take_over_server_reading(self) -> None:
        """Passthrough with plain connections both ways, no extension and no message hook: later server
        bytes are read in the socket callback and their frames forwarded unchanged to the client."""
        response = self.flow.response
        if (self.plan.message_hook or self.client_gone or self.context.server.tls or self.context.client.tls
                or response is None or response.headers.get("sec-websocket-extensions") or self.outbox is None):
            self._server_reader_tried = True
            return
        installed = self._install_reader(self.context.server, self.server_ws, self.direct_server_data)
        if installed is not False:
            self._server_reader_tried = True
        if not installed:
            return
        self._fast_server = wsread.FastReader(masked=False)
        log.debug("stage=direct_relay client=%s: server frames are forwarded from the socket callback",
                  self.context.client.peername)

    def _install_reader(self, connection: Any, ws: wsproto.Connection, deliver: Callable[[bytes], None]) -> bool | None:
        """Puts a DirectReader on a connection's transport at a frame boundary: True when done, False when
        mitmproxy still holds bytes or half a frame (try after its next read), None when this connection
        cannot be read directly."""
        assert self.outbox is not None
        io = self.outbox.connections.io(connection)
        reader = io.reader if io is not None else None
        transport = getattr(io.writer, "transport", None) if io is not None else None
        inner = transport.get_protocol() if transport is not None else None
        pending = getattr(reader, "_buffer", None)
        if not isinstance(inner, asyncio.StreamReaderProtocol) or transport is None or not hasattr(transport, "set_protocol") \
                or pending is None:
            return None
        if pending or not wsproto_idle(ws):
            return False
        transport.set_protocol(DirectReader(self, inner, deliver))
        return True

    def direct_server_data(self, data: bytes) -> None:
        """Server bytes from a DirectReader (passthrough): common frames go to the client as they came;
        from the first other frame on, and once the client is gone, the layers take the bytes as before."""
        fast = self._fast_server
        outbox = self.outbox
        assert outbox is not None
        if fast is None or not self._server_aligned or self.client_gone or self._handle_event != self.relay_messages:
            outbox.connections.feed_soon(events.DataReceived(self.context.server, data))
            return
        outbox.connections.activity()
        frames = fast.feed(data)
        if frames:
            messages = self.flow.websocket.messages  # type: ignore[union-attr]  # a WebSocket flow always has .websocket; mitmproxy types it Optional
            now = time.time()
            texts = 0
            for frame in frames:
                if frame.opcode == wsread.TEXT:
                    texts += 1
                    message = server_text(frame.payload, now, False)
                elif frame.opcode == wsread.BINARY:
                    message = WebSocketMessage(Opcode.BINARY, False, frame.payload, now)
                else:
                    continue  # a server Ping or Pong goes to the client as it came
                messages.append(message)
                self._observe(message)
            outbox.trim_messages()
            outbox.send(forwarded=fast.consumed, data_frames=texts)
        if fast.stopped:
            rest, fast.rest, self._fast_server = fast.rest, b"", None
            if rest:
                outbox.connections.feed_soon(events.DataReceived(self.context.server, rest))

    def direct_data(self, data: bytes) -> None:
        """Client bytes from a DirectReader: the same rules as serve_bridged, with what the session answers
        written at once. Common frames go through the fast reader; from the first other one on, wsproto reads."""
        hooks, outbox = self.hooks, self.outbox
        if hooks is None or outbox is None or self.client_gone:
            return
        outbox.connections.activity()
        fast = self._fast
        if fast is not None:
            for frame in fast.feed(data):
                if self.client_gone:
                    return
                if frame.opcode == wsread.PING:
                    outbox.send(control=wse.Pong(frame.payload))
                elif frame.opcode == wsread.PONG:
                    if self.keepalive is not None:
                        self.keepalive.pong(frame.payload)
                else:
                    self._note_client_frame(frame.payload, frame.text)
                    self._bridge_client_frame(frame.text, hooks)
            if not fast.stopped:
                return
            data, fast.rest, self._fast = fast.rest, b"", None
            if not data:
                return
        self.client_ws.receive_data(data)
        for ws_event in self.client_ws.events():
            if isinstance(ws_event, wse.Message):
                complete = self._complete_message(ws_event, hooks)
                if complete is not None:
                    self._note_client_frame(*complete)
                    self._bridge_client_frame(complete[1], hooks)
            elif isinstance(ws_event, wse.Ping):
                outbox.send(control=ws_event.response())
            elif isinstance(ws_event, wse.CloseConnection):
                # the close handshake, websocket_end and the flow's end belong to the layers
                outbox.connections.feed_soon(BridgeInjected(self.flow, placeholder_message(), client_closed=ws_event))
                return

    def _client_message(self, ws_event: wse.Message, hooks: BridgeHooks) -> layer.CommandGenerator[None]:
        """A client message read by wsproto in this layer's turn; what the session answers is yielded here."""
        complete = yield from self._in_turn(self._complete_message, ws_event, hooks)
        if complete is None:
            return
        content, text = complete
        message = self._note_client_frame(content, text)
        if self.plan.message_hook:
            yield ws_layers.WebsocketMessageHook(self.flow)
            if message.dropped or self.client_gone:
                return
            text = message.text if message.is_text else None
        yield from self._in_turn(self._bridge_client_frame, text, hooks)

    def _complete_message(self, ws_event: wse.Message, hooks: BridgeHooks) -> tuple[bytes, str | None] | None:
        """Adds a piece of a client message read by wsproto: the message (content, and its text unless binary)
        once complete; None before, or when it exceeds the size limit (the session answers an error then)."""
        buf = self.client_ws.frame_buf
        chunk = ws_event.data.encode() if isinstance(ws_event.data, str) else ws_event.data
        self._incoming += len(chunk)
        limit = hooks.max_frame_bytes
        if not (limit and self._incoming > limit):
            buf.append(chunk)  # joined once complete: adding to one bytes object copies it all again each time
        if not ws_event.message_finished:
            return None
        size, self._incoming = self._incoming, 0
        content = b"".join(buf)
        self.client_ws.frame_buf = [b""]
        if limit and size > limit:
            self._frames_in += 1
            if self.recorder is not None:
                self.recorder.error("client", f"client frame of {size} bytes over the limit was discarded")
            hooks.on_client_error(
                ClientFrameError("frame_too_large", f"Client frame of {size} bytes exceeds the limit of {limit} bytes.")
            )
            return None
        return content, (content.decode("utf-8", "replace") if isinstance(ws_event.data, str) else None)

    def _note_client_frame(self, content: bytes, text: str | None) -> WebSocketMessage:
        """Counts, records and keeps (for mitmweb and flow files) one complete client frame."""
        self._frames_in += 1
        if self.plan.meter is not None:
            self.plan.meter.client_frame(content)
        if self.recorder is not None:
            self.recorder.client_frame(text if text is not None else content)
        message = WebSocketMessage(Opcode.TEXT if text is not None else Opcode.BINARY, True, content)
        self.flow.websocket.messages.append(message)  # type: ignore[union-attr]  # a WebSocket flow always has .websocket; mitmproxy types it Optional
        if self.outbox is not None:
            self.outbox.trim_messages()
        return message

    @staticmethod
    def _bridge_client_frame(text: str | None, hooks: BridgeHooks) -> None:
        if text is not None:
            hooks.on_client_text(text)
        else:
            hooks.on_client_error(ClientFrameError("binary_frame", "Binary frames are not supported; send JSON text frames."))

    # -- both -------------------------------------------------------------------------------

    def _in_turn(self, send: Callable[..., _T], *args: Any, **kwargs: Any) -> layer.CommandGenerator[_T]:
        """Calls `send` (anything that sends through the outbox) so that what it sends is yielded here, in order
        with this layer's other commands (over TLS, the layers above encrypt it)."""
        outbox = self.outbox
        assert outbox is not None
        outbox.hold()
        try:
            result = send(*args, **kwargs)
        finally:
            data = outbox.take()
        if data:
            yield commands.SendData(self.context.client, data)
        return result

    def _injected(self, event: BridgeInjected) -> layer.CommandGenerator[None]:
        """What the outbox (a send the layers must encrypt, a close) or a DirectReader (the client's Close)
        handed to this layer's turn."""
        if event.client_closed is not None:
            if not self.client_gone:
                yield from self._close_client(event.client_closed.code, event.client_closed.reason or "", by_client=True)
            return
        outbox = self.outbox
        if self.client_gone or outbox is None or self.client_ws.state is not wsproto.ConnectionState.OPEN:
            return
        if event.close is None:
            yield from self._in_turn(outbox.send, event.frames, event.synthetic, keepalive=event.keepalive,
                                     control=event.control)
            return
        yield from self._close_client(*event.close)
        if self.hooks is None:  # relayed: the upstream goes too, unless it is read to its end
            if self.plan.drain and self.keepalive is not None and self.keepalive.state.in_flight:
                log.info("stage=upstream_drain client left mid-response; reading the upstream to its end")
                return
            yield from self._close_server()
            self._record_complete()

    def _close_client(self, code: int, reason: str, by_client: bool = False) -> layer.CommandGenerator[None]:
        ws = self.flow.websocket
        assert ws is not None and self.outbox is not None
        self.client_gone = True
        ws.timestamp_end = time.time()
        ws.closed_by_client = by_client
        ws.close_code = code
        ws.close_reason = reason
        if self.recorder is not None:
            self.recorder.close(code, reason, "client" if by_client else "proxy")
        yield from self._in_turn(self.outbox.send, control=wse.CloseConnection(code, reason))
        self.outbox.closed = True
        yield commands.CloseConnection(self.context.client)
        if self.hooks is not None:
            self._handle_event = self.done
            self.hooks.on_client_closed()
        self._ended()
        yield ws_layers.WebsocketEndHook(self.flow)
        self.flow.live = False

    def _record_complete(self) -> None:
        if self.recorder is not None and self.hooks is None:
            self.recorder.complete()

    def _ended(self) -> None:
        if self.keepalive is not None:
            self.keepalive.stop()
        ws = self.flow.websocket
        stats = self.keepalive.counters if self.keepalive is not None else (0, 0)
        log.debug(
            "stage=session_end mode=%s client=%s close_code=%s closed_by=%s frames_in=%d frames_out=%d bytes_out=%d "
            "duration=%.3fs",
            "bridge" if self.hooks is not None else "passthrough", self.context.client.peername,
            ws.close_code if ws else None, "client" if ws and ws.closed_by_client else "proxy",
            self._frames_in, stats[0], stats[1], time.monotonic() - self._started,
        )




class EventQueue(list[events.Event]):
    """A layer's queue of the events that come while it waits for a hook, with what mitmproxy's Layer does with its
    deque (append, popleft, truth, iteration; checked at load): 56 bytes when empty instead of a deque's 760, for each
    of the ~7 layers a session keeps from its connection's start (TLS, HTTP, ...) to its end."""

    __slots__ = ()

    def popleft(self) -> events.Event:
        return self.pop(0)


def _lighter_queues(layers: list[layer.Layer]) -> None:
    """The session's layers, the NextLayers between them and the HTTP layer's connection layers get an EventQueue."""
    seen: set[int] = set()
    todo: list[Any] = list(layers)
    while todo:
        x = todo.pop()
        if not isinstance(x, layer.Layer) or id(x) in seen:
            continue
        seen.add(id(x))
        queue = x._paused_event_queue
        if not queue and type(queue) is not EventQueue:
            x._paused_event_queue = EventQueue()  # type: ignore[assignment]  # a list with popleft is all Layer uses of it
        todo += (getattr(x, "child_layer", None), getattr(x, "layer", None))
        connections = getattr(x, "connections", None)
        if isinstance(connections, dict):
            todo += connections.values()


def install() -> None:
    """Makes mitmproxy build CodexWebsocketLayer for every WebSocket flow, and dispatch hooks only to the addons
    that implement them, with a listen backlog that holds a connection storm, and the listeners' fast path for
    bridged upgrades (taken once the bridge addon asks for it), and TLS contexts that release idle buffers
    (idempotent)."""
    ws_layers.WebsocketLayer = CodexWebsocketLayer  # type: ignore[misc]  # replacing mitmproxy's layer class is how the layer is installed (checked at load)
    dispatch.install()
    fastpath.install()
    listen.install()
    tls.install()


def uninstall() -> None:
    ws_layers.WebsocketLayer = _stock_layer  # type: ignore[misc]  # replacing mitmproxy's layer class is how the layer is installed (checked at load)
    dispatch.uninstall()
    listen.uninstall()
    fastpath.uninstall()
    tls.uninstall()
