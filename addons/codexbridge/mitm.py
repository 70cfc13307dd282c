"""The one module that touches mitmproxy internals: a WebSocket layer that serves bridged flows.

mitmproxy has no public API to answer a WebSocket at the proxy, send a Ping, see a Pong, or
send many frames in one pass. This module subclasses the stock WebsocketLayer, installs it by
replacing one module attribute, and talks to a flow's ConnectionHandler directly. It checks at
import that the internals it relies on are there and refuses to load otherwise.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import mitmproxy
import wsproto
import wsproto.events as wse
from mitmproxy import ctx, http
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers import websocket as ws_layers
from mitmproxy.proxy.utils import expect
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from .conversation import ClientFrameError
from .frames import encode_text_frame

log = logging.getLogger("codexbridge.mitm")


class IncompatibleMitmproxy(RuntimeError):
    pass


def _check_internals() -> None:
    problems = []
    stock = getattr(ws_layers, "WebsocketLayer", None)
    for name in ("WebsocketLayer", "WebsocketConnection", "WebSocketMessageInjected", "WebsocketStartHook",
                 "WebsocketMessageHook", "WebsocketEndHook"):
        if not hasattr(ws_layers, name):
            problems.append(f"mitmproxy.proxy.layers.websocket.{name} is missing")
    if stock is not None and not hasattr(stock, "relay_messages"):
        problems.append("WebsocketLayer.relay_messages is missing")
    try:
        flow_done = inspect.getsource(http_layers.HttpStream.flow_done)
        if "websocket.WebsocketLayer(" not in flow_done:
            problems.append("HttpStream.flow_done no longer builds websocket.WebsocketLayer")
    except (AttributeError, OSError, TypeError):
        problems.append("HttpStream.flow_done cannot be inspected")
    from mitmproxy.proxy import server

    if not hasattr(server.ConnectionHandler, "server_event") or "transports" not in getattr(server.ConnectionHandler, "__annotations__", {}):
        problems.append("ConnectionHandler.server_event/transports are missing")
    if problems:
        raise IncompatibleMitmproxy(
            f"codexbridge cannot run on mitmproxy {mitmproxy.version.VERSION}: " + "; ".join(problems)
            + ". Install a supported version: pip install 'mitmproxy>=12.2,<13'."
        )


_check_internals()


@dataclass
class BridgeInjected(ws_layers.WebSocketMessageInjected):
    """Frames, a ping or a close for a bridged client, sent in one pass through the layers."""

    frames: list[bytes] = field(default_factory=list)
    synthetic: bool = False
    close: tuple[int, str] | None = None
    ping: bytes | None = None


class BridgeHooks(Protocol):
    """What a bridged flow's layer calls (implemented by session.BridgeSession)."""

    max_frame_bytes: int

    def on_client_text(self, text: str) -> list[bytes]: ...
    def on_client_error(self, error: ClientFrameError) -> list[bytes]: ...
    def on_client_pong(self, payload: bytes) -> None: ...
    def on_client_closed(self) -> None: ...


_bridged: dict[str, BridgeHooks] = {}


def bridge_flow(flow: http.HTTPFlow, hooks: BridgeHooks) -> None:
    """Marks an upgrade flow (whose 101 the addon set) as served by the bridge."""
    _bridged[flow.id] = hooks


def _placeholder() -> WebSocketMessage:
    return WebSocketMessage(Opcode.TEXT, False, b"")


class CodexWebsocketLayer(ws_layers.WebsocketLayer):
    """The stock layer for ordinary WebSocket flows; a local server for bridged ones."""

    hooks: BridgeHooks | None

    def __init__(self, context: Context, flow: http.HTTPFlow):
        super().__init__(context, flow)
        self.hooks = _bridged.pop(flow.id, None)
        self._incoming = 0

    @expect(events.Start)
    def start(self, event: events.Event) -> layer.CommandGenerator[None]:
        if self.hooks is None:
            yield from ws_layers.WebsocketLayer.start(self, event)
            return
        # The synthetic 101 negotiated no extension: frames are plain.
        self.client_ws = ws_layers.WebsocketConnection(wsproto.ConnectionType.SERVER, [], conn=self.context.client)
        self.server_ws = ws_layers.WebsocketConnection(wsproto.ConnectionType.CLIENT, [], conn=self.context.server)
        yield ws_layers.WebsocketStartHook(self.flow)
        self._handle_event = self.serve_bridged

    _handle_event = start

    @expect(events.DataReceived, events.ConnectionClosed, ws_layers.WebSocketMessageInjected)
    def serve_bridged(self, event: events.Event) -> layer.CommandGenerator[None]:
        hooks = self.hooks
        assert hooks is not None and self.flow.websocket is not None
        if isinstance(event, BridgeInjected):
            yield from self._send_injected(event)
            return
        if isinstance(event, ws_layers.WebSocketMessageInjected):
            # inject.websocket from another addon: client-bound text goes out, the rest is ignored
            if not event.message.from_client:
                yield from self._send_frames([event.message.content], synthetic=True)
            return
        if event.connection != self.context.client:  # type: ignore[attr-defined]
            return  # a server connection opened eagerly by mitmproxy: never used for bridged flows
        self.client_ws.receive_data(event.data if isinstance(event, events.DataReceived) else None)
        for ws_event in self.client_ws.events():
            if isinstance(ws_event, wse.Message):
                yield from self._client_message(ws_event, hooks)
            elif isinstance(ws_event, wse.Ping):
                yield self.client_ws.send2(ws_event.response())
            elif isinstance(ws_event, wse.Pong):
                hooks.on_client_pong(bytes(ws_event.payload))
            elif isinstance(ws_event, wse.CloseConnection):
                yield from self._closed(ws_event.code, ws_event.reason or "", by_client=True)
                return

    def _client_message(self, ws_event: wse.Message, hooks: BridgeHooks) -> layer.CommandGenerator[None]:
        buf = self.client_ws.frame_buf
        chunk = ws_event.data.encode() if isinstance(ws_event.data, str) else ws_event.data
        self._incoming += len(chunk)
        limit = hooks.max_frame_bytes
        if not (limit and self._incoming > limit):
            buf[-1] += chunk
        if not ws_event.message_finished:
            return
        size, self._incoming = self._incoming, 0
        content = b"".join(buf)
        self.client_ws.frame_buf = [b""]
        is_text = isinstance(ws_event.data, str)
        if limit and size > limit:
            out = hooks.on_client_error(
                ClientFrameError("frame_too_large", f"Client frame of {size} bytes exceeds the limit of {limit} bytes.")
            )
            yield from self._send_frames(out, synthetic=True)
            return
        message = WebSocketMessage(Opcode.TEXT if is_text else Opcode.BINARY, True, content)
        self.flow.websocket.messages.append(message)  # type: ignore[union-attr]
        yield ws_layers.WebsocketMessageHook(self.flow)
        if message.dropped:
            return
        if message.is_text:
            out = hooks.on_client_text(message.text)
        else:
            out = hooks.on_client_error(ClientFrameError("binary_frame", "Binary frames are not supported; send JSON text frames."))
        if out:
            yield from self._send_frames(out, synthetic=True)

    def _send_injected(self, event: BridgeInjected) -> layer.CommandGenerator[None]:
        if event.frames:
            yield from self._send_frames(event.frames, event.synthetic)
        if event.ping is not None and self.client_ws.state is wsproto.ConnectionState.OPEN:
            yield self.client_ws.send2(wse.Ping(event.ping))
        if event.close is not None:
            yield from self._closed(*event.close, by_client=False)

    def _send_frames(self, frames: list[bytes], synthetic: bool) -> layer.CommandGenerator[None]:
        if self.client_ws.state is not wsproto.ConnectionState.OPEN:
            return
        messages = self.flow.websocket.messages  # type: ignore[union-attr]
        now = time.time()
        for payload in frames:
            messages.append(WebSocketMessage(Opcode.TEXT, False, payload, now, injected=synthetic))
        yield commands.SendData(self.context.client, b"".join(map(encode_text_frame, frames)))

    def _closed(self, code: int, reason: str, by_client: bool) -> layer.CommandGenerator[None]:
        ws = self.flow.websocket
        assert ws is not None
        ws.timestamp_end = time.time()
        ws.closed_by_client = by_client
        ws.close_code = code
        ws.close_reason = reason
        if self.client_ws.state in (wsproto.ConnectionState.OPEN, wsproto.ConnectionState.REMOTE_CLOSING):
            yield self.client_ws.send2(wse.CloseConnection(code, reason))
        yield commands.CloseConnection(self.context.client)
        self._handle_event = self.done
        assert self.hooks is not None
        self.hooks.on_client_closed()
        yield ws_layers.WebsocketEndHook(self.flow)
        self.flow.live = False


_stock_layer = ws_layers.WebsocketLayer


def install() -> None:
    """Makes mitmproxy build CodexWebsocketLayer for every WebSocket flow (idempotent)."""
    ws_layers.WebsocketLayer = CodexWebsocketLayer  # type: ignore[misc]


def uninstall() -> None:
    ws_layers.WebsocketLayer = _stock_layer  # type: ignore[misc]


class MitmChannel:
    """Sends to a bridged client through its connection handler, with write back-pressure."""

    def __init__(self, flow: http.HTTPFlow) -> None:
        self.flow = flow
        proxyserver: Any = ctx.master.addons.get("proxyserver")
        self._handler = proxyserver.connections.get(flow.client_conn.id)
        if self._handler is None:
            raise ValueError("flow is not from a live connection")

    async def send(self, frames: list[bytes], synthetic: bool = False) -> bool:
        return await self._inject(BridgeInjected(self.flow, _placeholder(), frames=frames, synthetic=synthetic))

    async def ping(self, payload: bytes) -> bool:
        return await self._inject(BridgeInjected(self.flow, _placeholder(), ping=payload))

    def close(self, code: int, reason: str) -> None:
        asyncio.get_running_loop().create_task(
            self._inject(BridgeInjected(self.flow, _placeholder(), close=(code, reason)))
        )

    async def _inject(self, event: BridgeInjected) -> bool:
        handler = self._handler
        io = handler.transports.get(handler.client)
        if io is None or io.writer is None:
            return False
        await handler.server_event(event)
        writer = io.writer
        if writer.is_closing():
            return False
        try:
            await writer.drain()
        except (OSError, RuntimeError):
            return False
        return True
