"""A WebSocket client on wsproto that exposes what high-level clients hide: pings, pongs, closes."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import wsproto
import wsproto.events as wse


@dataclass
class RawWebSocket:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    ws: wsproto.WSConnection
    answer_pings: bool = True
    pings: list[float] = field(default_factory=list)  # arrival times (monotonic)
    messages: asyncio.Queue[str | bytes] = field(default_factory=asyncio.Queue)
    close_code: int | None = None
    close_reason: str | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _partial: list[Any] = field(default_factory=list)

    @classmethod
    async def connect(cls, port: int, path: str = "/v1/responses", headers: dict[str, str] | None = None,
                      answer_pings: bool = True, tls: bool = False) -> RawWebSocket:
        """`tls`: TLS to the proxy, without certificate checks (it shows a certificate mitmproxy made)."""
        context = None
        if tls:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        writer.write(ws.send(wsproto.events.Request(host=f"127.0.0.1:{port}", target=path, extra_headers=extra)))
        client = cls(reader, writer, ws, answer_pings)
        async with asyncio.timeout(10):
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("closed during handshake")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, wse.AcceptConnection):
                        client._task = asyncio.create_task(client._read())
                        return client
                    if isinstance(event, wse.RejectConnection):
                        raise ConnectionError(f"upgrade rejected with {event.status_code}")

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                self.ws.receive_data(data or None)
                for event in self.ws.events():
                    if isinstance(event, wse.Ping):
                        self.pings.append(time.monotonic())
                        if self.answer_pings:
                            self.writer.write(self.ws.send(event.response()))
                    elif isinstance(event, wse.Message):
                        self._partial.append(event.data)
                        if event.message_finished:
                            parts, self._partial = self._partial, []
                            joined: str | bytes = "".join(parts) if isinstance(parts[0], str) else b"".join(parts)
                            await self.messages.put(joined)
                    elif isinstance(event, wse.CloseConnection):
                        self.close_code, self.close_reason = event.code, event.reason
                        if self.ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                            self.writer.write(self.ws.send(event.response()))
                        return
                if not data:
                    self.close_code = self.close_code or 1006
                    return
        except (ConnectionError, wsproto.utilities.LocalProtocolError):
            self.close_code = self.close_code or 1006
        finally:
            self.closed.set()

    async def send_json(self, obj: Any) -> None:
        self.writer.write(self.ws.send(wse.TextMessage(json.dumps(obj))))
        await self.writer.drain()

    async def ping(self, payload: bytes) -> None:
        self.writer.write(self.ws.send(wse.Ping(payload)))
        await self.writer.drain()

    async def recv_json(self, timeout: float = 15) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            raw = await self.messages.get()
        return json.loads(raw)

    async def close(self, code: int = 1000) -> None:
        if self.ws.state is wsproto.connection.ConnectionState.OPEN:
            self.writer.write(self.ws.send(wse.CloseConnection(code)))
            await self.writer.drain()
        try:
            async with asyncio.timeout(5):
                await self.closed.wait()
        except TimeoutError:
            pass
        self.abort()

    def abort(self) -> None:
        self.writer.transport.abort()
        if self._task is not None:
            self._task.cancel()
