"""Serves a recording as a mock upstream, over POST + SSE and over the WebSocket mode, checking requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import h11
import wsproto
import wsproto.connection
import wsproto.events as wse

from codexbridge.recording.schema import Recording
from codexbridge.replay.rules import Exchange, Normalizer, canonical_json, describe_difference, exchanges, turns
from codexbridge.wire.wsframes import accept_token

log = logging.getLogger("codexbridge.replay.rules")
_SKIP_RESPONSE_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


@dataclass
class ReplayReport:
    posts_served: int = 0
    posts_total: int = 0
    turns_served: int = 0
    turns_total: int = 0
    divergences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.divergences and self.posts_served == self.posts_total and self.turns_served == self.turns_total

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "posts_served": self.posts_served, "posts_total": self.posts_total,
                "turns_served": self.turns_served, "turns_total": self.turns_total, "divergences": self.divergences}


class RecordedUpstream:
    """An HTTP/1.1 server that answers from recordings: it hands each request to `_respond` and a WebSocket
    upgrade to `_upgrade`, and streams a recorded POST answer at `speed` times its recorded pace (0: at once)."""

    def __init__(self, speed: float = 0.0) -> None:
        self.speed = speed
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _respond(self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, target: str,
                       headers: list[tuple[str, str]], body: bytes) -> None:
        raise NotImplementedError

    async def _upgrade(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       request: h11.Request, headers: list[tuple[str, str]]) -> None:
        raise NotImplementedError

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await read_request(conn, reader)
                if request is None:
                    return
                headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers.raw_items()]
                if any(n.lower() == "upgrade" and v.lower() == "websocket" for n, v in headers):
                    await self._upgrade(conn, reader, writer, request, headers)
                    return
                await self._respond(conn, writer, request, request.target.decode("latin-1"), headers, body)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _pace(self, previous: float | None, t: float) -> None:
        if self.speed > 0 and previous is not None and t > previous:
            await asyncio.sleep((t - previous) / self.speed)

    async def _stream(self, conn: h11.Connection, writer: asyncio.StreamWriter, exchange: Exchange) -> None:
        """The recorded answer to a POST: its status and headers, then its body cut as it was read."""
        response = exchange.response
        status = response.status if response else 502
        headers = [(n, v) for n, v in (response.headers if response else []) if n.lower() not in _SKIP_RESPONSE_HEADERS]
        writer.write(conn.send(h11.Response(status_code=status, headers=[*headers, ("transfer-encoding", "chunked")])))
        await writer.drain()
        previous = response.t if response else None
        for t, chunk in exchange.chunks:
            await self._pace(previous, t)
            previous = t
            if chunk:
                writer.write(conn.send(h11.Data(data=chunk)))
                await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()


async def read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request | None, bytes]:
    """The next whole request on a connection; (None, b"") when the client closed it."""
    request: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data and conn.their_state is h11.IDLE:
                return None, b""
        elif event is h11.PAUSED:
            return request, body
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, body
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


async def send_json(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    writer.write(conn.send(h11.Response(status_code=status, headers=[
        ("content-type", "application/json"), ("content-length", str(len(data)))])))
    writer.write(conn.send(h11.Data(data=data)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


def error_body(code: str, message: str, kind: str = "server_error") -> dict[str, Any]:
    return {"error": {"type": kind, "code": code, "message": message}}


class ReplayServer(RecordedUpstream):
    """Answers the recorded requests in order: the n-th POST gets the n-th recorded upstream answer, the n-th
    WebSocket client frame gets the frames that followed the n-th recorded client frame."""

    def __init__(self, recording: Recording, speed: float = 0.0, strict: bool = False) -> None:
        super().__init__(speed)
        self.recording = recording
        self.strict = strict
        self.normalizer = Normalizer(recording)
        self.exchanges = exchanges(recording)
        self.turns = [t for t in turns(recording) if t.client is not None]
        self.preamble = [t for t in turns(recording) if t.client is None]
        self.report = ReplayReport(posts_total=len(self.exchanges), turns_total=len(self.turns))

    def _diverged(self, what: str, expected: str, actual: str) -> bool:
        diff = describe_difference(canonical_json(expected), canonical_json(self.normalizer.text(actual)))
        if diff:
            self.report.divergences.append(f"{what}: {diff}")
            log.warning("divergence in %s: %s", what, diff)
        return diff is not None

    # -- HTTP --------------------------------------------------------------------------------

    async def _respond(self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, target: str,
                       headers: list[tuple[str, str]], body: bytes) -> None:
        if target.startswith("/__replay/report"):
            await send_json(conn, writer, 200, self.report.as_dict())
        elif request.method == b"POST" and target.split("?")[0].endswith("/responses"):
            await self._post(conn, writer, body)
        else:
            await send_json(conn, writer, 404, {"error": {"message": f"no route for {target}"}})

    async def _post(self, conn: h11.Connection, writer: asyncio.StreamWriter, body: bytes) -> None:
        index = self.report.posts_served
        if index >= len(self.exchanges):
            self.report.divergences.append(f"POST #{index + 1}: not in the recording (it has {len(self.exchanges)})")
            await send_json(conn, writer, 500, error_body("replay_exhausted", "The recording has no more requests."))
            return
        exchange = self.exchanges[index]
        self.report.posts_served += 1
        if self._diverged(f"POST #{index + 1} body", exchange.request.body, body.decode("utf-8", "replace")) and self.strict:
            await send_json(conn, writer, 409, error_body("replay_divergence", self.report.divergences[-1],
                                                          "invalid_request_error"))
            return
        await self._stream(conn, writer, exchange)

    # -- WebSocket mode ----------------------------------------------------------------------

    async def _upgrade(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       request: h11.Request, headers: list[tuple[str, str]]) -> None:
        await self._websocket(reader, writer, {n.lower(): v for n, v in headers}, conn.trailing_data[0])

    async def _websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         headers: dict[str, str], trailing: bytes) -> None:
        accept = accept_token(headers.get("sec-websocket-key", "")).encode()
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        ws = wsproto.connection.Connection(wsproto.ConnectionType.SERVER)
        for turn in self.preamble:
            for _, frame, _ in turn.frames:
                writer.write(ws.send(wse.TextMessage(frame)))
        self.preamble = []
        if trailing:
            ws.receive_data(trailing)
        parts: list[str] = []
        while True:
            for event in ws.events():
                if isinstance(event, wse.TextMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        await self._turn(ws, writer, "".join(parts))
                        parts = []
                elif isinstance(event, wse.Ping):
                    writer.write(ws.send(event.response()))
                elif isinstance(event, wse.CloseConnection):
                    with contextlib.suppress(Exception):
                        writer.write(ws.send(event.response()))
                    return
            await writer.drain()
            data = await reader.read(65536)
            if not data:
                return
            ws.receive_data(data)

    async def _turn(self, ws: wsproto.connection.Connection, writer: asyncio.StreamWriter, text: str) -> None:
        index = self.report.turns_served
        if index >= len(self.turns):
            self.report.divergences.append(f"client frame #{index + 1}: not in the recording")
            error = {"type": "error", "status": 500, **error_body("replay_exhausted", "No more recorded turns.")}
            writer.write(ws.send(wse.TextMessage(json.dumps(error))))
            return
        turn = self.turns[index]
        self.report.turns_served += 1
        expected = turn.client.text if turn.client is not None else None
        self._diverged(f"client frame #{index + 1}", expected or "", text)
        previous = turn.client.t if turn.client is not None else None
        started = time.monotonic()
        for t, frame, _ in turn.frames:
            await self._pace(previous, t)
            previous = t
            writer.write(ws.send(wse.TextMessage(frame)))
            await writer.drain()
        log.debug("served turn %d in %.3fs", index + 1, time.monotonic() - started)
