"""The upstream a test talks to: serves its recorded sessions, checks every request, sends new episodes live."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import h11
import httpx
import wsproto.connection

from codexbridge.recording.schema import Recording, UpstreamEnd, UpstreamRequest
from codexbridge.replay.rules import Exchange, exchanges
from codexbridge.replay.server import RecordedUpstream, ReplayServer, error_body, send_json
from codexbridge.testing.matching import Divergence, Matcher
from codexbridge.testing.scrub import RecordedRequest

_SKIP_FORWARDED = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
                   "proxy-connection"}
T = TypeVar("T")


class SessionReplay(ReplayServer):
    """One recorded session served over a WebSocket; its client frames are compared with the test's rules."""

    def __init__(self, recording: Recording, label: str, matcher: Matcher, sink: list[Divergence],
                 speed: float = 0.0) -> None:
        super().__init__(recording, speed=speed)
        self.label = label
        self.matcher = matcher
        self.sink = sink
        self.opened = False

    def _request(self, text: str) -> RecordedRequest:
        upgrade = self.recording.header.request
        return RecordedRequest("frame", upgrade.url or "", list(upgrade.headers), text)

    def _diverged(self, what: str, expected: str, actual: str) -> bool:
        found = self.matcher.compare(f"{what} of the WebSocket session", self.label, expected, self._request(actual),
                                     self.normalizer)
        if found is not None:
            self.sink.append(found)
        return found is not None

    async def _turn(self, ws: wsproto.connection.Connection, writer: asyncio.StreamWriter, text: str) -> None:
        if self.report.turns_served >= len(self.turns):
            came = self.matcher.live(self._request(text), self.normalizer)
            self.sink.append(Divergence(f"client frame #{self.report.turns_served + 1} of the WebSocket session",
                                        self.label, None, came))
        await super()._turn(ws, writer, text)

    def unplayed(self) -> list[Divergence]:
        return [Divergence(f"client frame #{i + 1} of the WebSocket session", self.label,
                           self.matcher.canonical(turn.client.text or "") if turn.client else None, None)
                for i, turn in enumerate(self.turns) if i >= self.report.turns_served]


@dataclass
class RecordedPost:
    """One recorded upstream POST of a session, and whether a live request has taken it."""

    session: SessionReplay
    number: int  # 1-based, within its session
    exchange: Exchange
    expected: Any
    played: bool = False


class CassetteServer(RecordedUpstream):
    """Answers a test's requests from its recordings, in the order they were recorded.

    A WebSocket connection takes the next recorded session that has client frames; a POST takes the first
    recorded POST not yet taken whose body matches (so concurrent lanes may arrive in any order), or else the
    next one in order, as a divergence. With `live` (a recording bridge in front of the live upstream), what
    the recordings cannot answer goes there instead: a POST that matches nothing, a connection beyond the
    recorded sessions."""

    def __init__(self, recordings: list[tuple[str, Recording]], matcher: Matcher, *, live: str | None = None,
                 speed: float = 0.0) -> None:
        super().__init__(speed)
        self.matcher = matcher
        self.live = live.rstrip("/") if live else None
        self.divergences: list[Divergence] = []
        self.sessions = [SessionReplay(rec, label, matcher, self.divergences, speed) for label, rec in recordings]
        self.posts = [RecordedPost(s, i + 1, e, matcher.canonical(e.request.body))
                      for s in self.sessions for i, e in enumerate(exchanges(s.recording))]
        self.overlapping = {s.label for s in self.sessions if overlapping_posts(s.recording)}
        self.posts_seen = 0
        self.connections_seen = 0
        self.forwarded = 0  # requests and connections sent to the live upstream
        self._default_normalizer = self.sessions[0].normalizer if self.sessions else None

    def unplayed(self) -> list[Divergence]:
        """What the recordings hold that no request asked for."""
        out: list[Divergence] = []
        for session in self.sessions:
            posts = [p for p in self.posts if p.session is session]
            if session.opened:
                out += session.unplayed()
            elif session.turns and not any(p.played for p in posts):
                first = session.turns[0].client
                out.append(Divergence("WebSocket session", session.label,
                                      self.matcher.canonical(first.text or "") if first else None, None))
            else:
                out += [Divergence(f"POST #{p.number} of the session", session.label, p.expected, None)
                        for p in posts if not p.played]
        return out

    # -- connections -------------------------------------------------------------------------

    async def _respond(self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, target: str,
                       headers: list[tuple[str, str]], body: bytes) -> None:
        if request.method == b"POST" and target.split("?")[0].endswith("/responses"):
            await self._post(conn, writer, target, headers, body)
        else:
            await send_json(conn, writer, 404, error_body("not_found", f"no route for {target}"))

    async def _upgrade(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       request: h11.Request, headers: list[tuple[str, str]]) -> None:
        self.connections_seen += 1
        taken = {p.session for p in self.posts if p.played}
        session = next((s for s in self.sessions if s.turns and not s.opened and s not in taken), None)
        if session is None:
            if self.live is not None:
                await self._tunnel(reader, writer, request, headers, conn.trailing_data[0])
                return
            self.divergences.append(Divergence(f"WebSocket connection #{self.connections_seen}", "", None,
                                               {"url": request.target.decode("latin-1")},
                                               "no recorded WebSocket session is left for it"))
            await send_json(conn, writer, 500, error_body("replay_exhausted", "No recorded WebSocket session is left."))
            return
        session.opened = True
        await session._upgrade(conn, reader, writer, request, headers)

    async def _post(self, conn: h11.Connection, writer: asyncio.StreamWriter, target: str,
                    headers: list[tuple[str, str]], body: bytes) -> None:
        self.posts_seen += 1
        live = RecordedRequest("post", target, headers, body.decode("utf-8", "replace"))
        waiting = [p for p in self.posts if not p.played and not p.session.opened]
        came: dict[int, Any] = {}  # by normalizer: sessions recorded with other redaction or elision see it otherwise
        for post in waiting:
            key = id(post.session.normalizer)
            if key not in came:
                came[key] = self.matcher.live(live, post.session.normalizer)
            if came[key] == post.expected:
                post.played = True
                await self._serve(conn, writer, post)
                return
        if self.live is not None:
            await self._forward(conn, writer, target, headers, body)
            return
        if not waiting:
            normalizer = self._default_normalizer
            value = self.matcher.live(live, normalizer) if normalizer else self.matcher.canonical(live.body)
            self.divergences.append(Divergence(f"POST #{self.posts_seen} to {target}", "", None, value,
                                               "every recorded POST was already answered"))
            await send_json(conn, writer, 500, error_body("replay_exhausted", "The recording has no more requests."))
            return
        post = waiting[0]
        post.played = True
        self.divergences.append(Divergence(f"POST #{self.posts_seen} to {target}", post.session.label, post.expected,
                                           came[id(post.session.normalizer)],
                                           f"recorded as POST #{post.number} of its session"))
        await self._serve(conn, writer, post)

    async def _serve(self, conn: h11.Connection, writer: asyncio.StreamWriter, post: RecordedPost) -> None:
        if post.session.label in self.overlapping:
            self.divergences.append(Divergence(
                f"POST #{self.posts_seen}", post.session.label, post.expected, post.expected,
                "this recording's upstream POSTs overlap in time (concurrent responses recorded without "
                "codexbridge_max_active=1), so which answer belongs to which POST is not known: replay it over "
                "the WebSocket (codexbridge_upstream) instead of through a bridge"))
        await self._stream(conn, writer, post.exchange)

    # -- new episodes: to the live upstream, through the recording bridge ---------------------

    async def _forward(self, conn: h11.Connection, writer: asyncio.StreamWriter, target: str,
                       headers: list[tuple[str, str]], body: bytes) -> None:
        assert self.live is not None
        self.forwarded += 1
        sent = [(n, v) for n, v in headers if n.lower() not in _SKIP_FORWARDED]
        if not any(n.lower() == "accept-encoding" for n, _ in sent):
            sent.append(("accept-encoding", "identity"))
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None)) as client:
            async with client.stream("POST", self.live + target, content=body, headers=sent) as answer:
                kept = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in answer.headers.raw
                        if n.decode("latin-1").lower() not in _SKIP_FORWARDED]
                writer.write(conn.send(h11.Response(status_code=answer.status_code,
                                                    headers=[*kept, ("transfer-encoding", "chunked")])))
                async for chunk in answer.aiter_raw():
                    if chunk:
                        writer.write(conn.send(h11.Data(data=chunk)))
                        await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: h11.Request,
                      headers: list[tuple[str, str]], trailing: bytes) -> None:
        assert self.live is not None
        self.forwarded += 1
        origin = urlsplit(self.live)
        up_reader, up_writer = await asyncio.open_connection(origin.hostname, origin.port)
        head = f"{request.method.decode()} {request.target.decode('latin-1')} HTTP/1.1\r\n"
        head += "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
        up_writer.write(head.encode("latin-1") + trailing)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


def overlapping_posts(recording: Recording) -> bool:
    """A second upstream POST began before the previous one's answer ended (concurrent lanes)."""
    open_posts = 0
    for event in recording.events:
        if isinstance(event, UpstreamRequest):
            if open_posts:
                return True
            open_posts += 1
        elif isinstance(event, UpstreamEnd):
            open_posts = max(0, open_posts - 1)
    return False


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.close()


class LoopThread:
    """An event loop in a daemon thread, so the servers run beside a test's own (sync or asyncio) code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="codexbridge-replay", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()

