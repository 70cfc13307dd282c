"""The one way to a flow's client: every frame for it leaves through ClientOutbox.send."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import wsproto
import wsproto.events as wse
from mitmproxy import http
from OpenSSL import SSL

from codexbridge.mitm.channel import FlowConnections
from codexbridge.mitm.messages import BridgeInjected, placeholder_message, server_text
from codexbridge.mitm.tls import encrypt, shed_bios
from codexbridge.wire.wsframes import encode_text_frame

if TYPE_CHECKING:
    from codexbridge.mitm.keepalive_driver import KeepaliveDriver
    from codexbridge.mitm.plans import FlowMeter
    from codexbridge.recording.pipe import RemoteRecorder

_OPEN = wsproto.ConnectionState.OPEN
_REMOTE_CLOSING = wsproto.ConnectionState.REMOTE_CLOSING  # the client sent its Close: ours answers it


class ClientOutbox:
    """Every frame for one flow's client leaves through send(): Responses events (relayed or made by the bridge),
    error frames, text keepalives, pings, pongs, close frames, and passthrough frames forwarded as they came.
    send() also feeds the recorder, the flow's message list and the keepalive clock, once per frame.

    Where the bytes go: straight to the socket on a plain connection (nothing between would change them); into
    the layer's turn while the layer holds the outbox (the layer yields them, in order with its other commands);
    over TLS, encrypted here with the client's TLS connection of mitmproxy's TLS layer and written to the socket
    (what that layer would do in a turn of its own; see use_tls); otherwise into the layer's next turn."""

    HIGH_WATER = 256 * 1024  # bytes buffered toward a client before its upstream reads pause

    def __init__(self, flow: http.HTTPFlow) -> None:
        self.flow = flow
        self.connections = FlowConnections(flow)  # ValueError when the flow is not from a live connection
        self.ws: wsproto.Connection | None = None  # the client side, once the flow's layer started
        self.recorder: RemoteRecorder | None = None
        self.keepalive: KeepaliveDriver | None = None
        self.meter: FlowMeter | None = None  # the metrics addon's counters, when it is on
        self.closed = False  # the layer closed the client side: nothing more goes out
        self.direct = not flow.client_conn.tls
        self.tls: Any = None  # the client's pyOpenSSL connection, when frames are encrypted here (use_tls)
        self.window = 0  # frames the flow keeps (the most recent); 0: all
        self.dropped = 0  # frames dropped from the flow's list to keep it within the window
        self._trim_at = 0
        self._held: list[bytes] | None = None
        self._encode_text = encode_text_frame

    def attach(self, ws: wsproto.Connection, recorder: RemoteRecorder | None, extensions: bool, window: int = 0) -> None:
        """The flow's layer started: its client connection, whether that negotiated an extension, and how many
        frames the flow keeps."""
        self.ws = ws
        self.recorder = recorder
        self.window = window
        self._trim_at = window + max(64, window // 4) if window else 0  # trims now and then, not per frame
        if extensions:  # (relayed flows only: the bridge's own 101 negotiates none) wsproto applies it
            self._encode_text = lambda payload: ws.send(wse.TextMessage(payload.decode()))

    def send(self, frames: list[bytes] | None = None, synthetic: bool = False, *, keepalive: bool = False,
             control: wse.Ping | wse.Pong | wse.CloseConnection | None = None, forwarded: bytes | None = None,
             data_frames: int = 0) -> bool:
        """Sends, after everything sent before, one of:
        - `frames`: text frames, Responses events (`synthetic` when the bridge made them) or, with `keepalive`,
          the text keepalive;
        - `control`: a ping, pong or close frame of the proxy's own. A close outside the layer's turn asks the
          layer to close the client (the close handshake and the flow's end are its part); its frame then
          comes back here, in that turn;
        - `forwarded`: passthrough bytes as the upstream framed them, `data_frames` of them data frames (the
          layer put those in the flow and the recording as it read them).
        False when the client cannot be written to."""
        held = self._held
        writer = None
        if held is None:
            writer = self.connections.writer()
            if writer is None:
                return False
        if forwarded is not None:
            return self._write(forwarded, data_frames > 0, data_frames, writer)
        ws = self.ws
        if ws is None or self.closed:
            return False
        if ws.state is not _OPEN and not (ws.state is _REMOTE_CLOSING and isinstance(control, wse.CloseConnection)):
            return False
        if held is None:
            if isinstance(control, wse.CloseConnection):
                self.connections.feed_soon(BridgeInjected(self.flow, placeholder_message(),
                                                          close=(control.code, control.reason or "")))
                return True
            if not self.direct and self.tls is None:  # in the layer's next turn
                self.connections.feed_soon(BridgeInjected(self.flow, placeholder_message(), frames=frames or [],
                                                          synthetic=synthetic, keepalive=keepalive, control=control))
                return True
        if control is not None:
            if isinstance(control, wse.Ping) and self.recorder is not None:
                self.recorder.ping(bytes(control.payload))
            return self._write(ws.send(control), False, 0, writer)
        if not frames:
            return False
        recorder = self.recorder
        if recorder is not None:
            if keepalive:
                recorder.text_keepalive()
            else:
                recorder.to_client(frames, synthetic)
        now = time.time()
        messages = self.flow.websocket.messages  # type: ignore[union-attr]  # a WebSocket flow has .websocket
        messages.extend([server_text(payload, now, synthetic) for payload in frames])
        if self._trim_at and len(messages) > self._trim_at:
            self.trim_messages()
        encode = self._encode_text
        data = b"".join(map(encode, frames)) if len(frames) > 1 else encode(frames[0])
        return self._write(data, True, len(frames), writer)

    def _write(self, data: bytes, text: bool, frames: int, writer: asyncio.StreamWriter | None) -> bool:
        if self.keepalive is not None:
            self.keepalive.wrote(text, len(data), frames)
        if self.meter is not None:
            self.meter.to_client(frames, len(data))
        held = self._held
        if held is not None:
            held.append(data)
        elif writer is not None:
            self.connections.activity()
            if self.tls is not None:
                return self._encrypt_to(writer, data)
            writer.write(data)
        return True

    def use_tls(self, tls: Any) -> None:
        """Frames sent outside the layer's turn are encrypted here, with the TLS layer's own connection, and written
        at once: the TLS layer does the same in its turn (sendall, then every record the memory BIO holds to the
        socket), and both run on the one event loop, so records reach the socket in the order they were made.
        Saves a layer pass per write (a task and the whole layer stack) on the bridge's busiest path."""
        self.tls = tls

    def idle(self) -> None:
        """The client connection is quiet (a keepalive ping is due): a TLS connection's memory BIOs start afresh,
        instead of keeping the size of the most they ever held (tls.shed_bios)."""
        if self.tls is not None:
            shed_bios(self.tls)

    def _encrypt_to(self, writer: asyncio.StreamWriter, data: bytes) -> bool:
        try:
            records = encrypt(self.tls, data)
        except SSL.Error:
            self.tls = None  # the TLS connection is closing: the layers take it from here
            return False
        if records:
            writer.write(records)
        return True

    def trim_messages(self) -> None:
        """Keeps the flow's list of frames within the window: the oldest go, and the flow's metadata counts them."""
        messages = self.flow.websocket.messages  # type: ignore[union-attr]  # a WebSocket flow always has .websocket; mitmproxy types it Optional
        excess = len(messages) - self.window if self._trim_at and len(messages) > self._trim_at else 0
        if excess > 0:
            del messages[:excess]
            self.dropped += excess
            self.flow.metadata.setdefault("codexbridge", {})["messages_dropped"] = self.dropped

    def close(self, code: int, reason: str) -> None:
        """Asks the flow's layer to close the client with this code, in its next turn (from anywhere)."""
        if not self.closed:
            self.connections.feed_soon(BridgeInjected(self.flow, placeholder_message(), close=(code, reason)))

    def hold(self) -> None:
        """Until take(), what is sent is kept for the layer, which yields it in its turn."""
        self._held = []

    def take(self) -> bytes:
        held, self._held = self._held, None
        return b"".join(held) if held else b""

    def congested(self) -> bool:
        writer = self.connections.writer()
        return writer is not None and writer.transport.get_write_buffer_size() > self.HIGH_WATER

    async def drained(self) -> bool:
        writer = self.connections.writer()
        if writer is None:
            return False
        try:
            await writer.drain()
        except (OSError, RuntimeError):
            return False
        return not writer.is_closing()

    def response_state(self, in_flight: bool) -> None:
        """Responses started or all ended: the text keepalive runs only in between."""
        keepalive = self.keepalive
        if keepalive is not None:
            if in_flight:
                keepalive.response_started()
            else:
                keepalive.response_ended()
