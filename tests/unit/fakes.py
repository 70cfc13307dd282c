"""In-memory neighbours of the session core: a client channel that keeps what it is sent, and an upstream pool
whose responses a test writes event by event (no sockets, no mitmdump)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from codexbridge.bridge.session import BridgeSession, SessionConfig
from codexbridge.bridge.upstream import HeadCallback, Sink, UpstreamResponse, UpstreamSettings
from codexbridge.responses.events import dumps
from codexbridge.wire.http1 import ResponseHead

UPSTREAM_URL = "http://upstream.test/v1/responses"


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Runs an async test on a fresh event loop, bounded in time."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 5))

    return run


async def turns(n: int = 10) -> None:
    """Lets the loop run every task that is ready (n rounds)."""
    for _ in range(n):
        await asyncio.sleep(0)


class FakeClient:
    """A ClientChannel: keeps every frame the session sends, in order, with whether it was synthetic."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bool]] = []
        self.gone = False  # the client cannot be written to any more
        self.congested_now = False
        self.in_flight: list[bool] = []  # response_state() calls, in order
        self._drained = asyncio.Event()

    def send(self, frames: list[bytes], synthetic: bool = False) -> bool:
        if self.gone:
            return False
        self.sent.extend((frame, synthetic) for frame in frames)
        return True

    def congested(self) -> bool:
        return self.congested_now

    async def drained(self) -> bool:
        while self.congested_now and not self.gone:
            self._drained.clear()
            await self._drained.wait()
        return not self.gone

    def response_state(self, in_flight: bool) -> None:
        self.in_flight.append(in_flight)

    def reads_everything(self) -> None:
        """The client catches up with what was buffered toward it."""
        self.congested_now = False
        self._drained.set()

    def leaves(self) -> None:
        self.gone = True
        self._drained.set()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(frame) for frame, _ in self.sent]

    @property
    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    def errors(self) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == "error"]


class FakeConnection:
    """An upstream connection as ResponseRun uses it: a body streamed to a sink, a done future, pause/resume."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.sink: Sink | None = None
        self.early: list[bytes] = []
        self.paused = False
        self.closed = False
        self.pieces: list[bytes] = []
        self.reusable = True

    def stream(self, sink: Sink) -> asyncio.Future[None]:
        early, self.early = self.early, []
        for chunk in early:
            sink(chunk)
        self.sink = sink
        return self.done

    def deliver(self, chunk: bytes) -> None:
        """One network read of the body, as the real connection's callback hands it on."""
        if self.sink is None:
            self.early.append(chunk)
            return
        try:
            self.sink(chunk)
        except Exception as e:  # noqa: BLE001 - like the real connection: the relay's failure goes to the waiting task
            if not self.done.done():
                self.done.set_exception(e)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True


class FakeExchange:
    """One request to the fake upstream; the test answers it: head, events (one read per call), end or failure."""

    def __init__(self, body: dict[str, Any], headers: list[tuple[str, str]], on_head: HeadCallback | None) -> None:
        self.body = body
        self.headers = headers
        self.on_head = on_head
        self.conn = FakeConnection()
        self.head: asyncio.Future[ResponseHead] = asyncio.get_running_loop().create_future()

    def respond(self, status: int = 200, content_type: str = "text/event-stream", body: bytes = b"") -> None:
        head = ResponseHead(status, "OK" if status == 200 else "Error", [("Content-Type", content_type)])
        if self.on_head is not None:
            self.conn.sink = self.on_head(head, self.conn)  # the body flows before the waiting task wakes up
        self.head.set_result(head)
        if body:
            self.conn.deliver(body)
            self.end()

    def events(self, *events: dict[str, Any]) -> None:
        """Events in one network read, as OpenAI frames them (event name line, then the JSON)."""
        self.conn.deliver(b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), dumps(e)) for e in events))

    def end(self) -> None:
        if not self.conn.done.done():
            self.conn.done.set_result(None)

    def fail(self, error: Exception) -> None:
        """Before the head: the request fails; after it: the body breaks."""
        if not self.head.done():
            self.head.set_exception(error)
        elif not self.conn.done.done():
            self.conn.done.set_exception(error)

    def start(self, response_id: str = "r1") -> None:
        """A response under way: the head, then its response.created event."""
        self.respond()
        self.events(created_event(response_id))

    def answer(self, response_id: str, text: str = "done") -> None:
        """The head and every event of a successful response, in one read; the body has not ended yet."""
        self.respond()
        self.events(*completed_events(response_id, text))

    def complete(self, response_id: str, text: str = "done") -> None:
        """A whole successful response in one go: head, events, end of body."""
        self.answer(response_id, text)
        self.end()


class FakeUpstream:
    """An UpstreamPool as the session and its runs use it: send() records the request; response() waits for
    the test to answer it."""

    def __init__(self) -> None:
        self.exchanges: list[FakeExchange] = []
        self.released: list[FakeConnection] = []

    def send(self, settings: UpstreamSettings, method: str, url: str, headers: list[tuple[str, str]], body: bytes,
             on_head: HeadCallback | None = None, keep_pieces: bool = False) -> FakeExchange:
        assert method == "POST" and url == UPSTREAM_URL
        exchange = FakeExchange(json.loads(body), headers, on_head)
        self.exchanges.append(exchange)
        return exchange

    async def response(self, exchange: FakeExchange) -> UpstreamResponse:
        head = await exchange.head
        return UpstreamResponse(self, exchange.conn, head)  # type: ignore[arg-type]  # fakes in place of the pool and connection

    def release(self, conn: FakeConnection) -> None:
        self.released.append(conn)

    @property
    def last(self) -> FakeExchange:
        return self.exchanges[-1]


def created_event(response_id: str, sequence: int = 0) -> dict[str, Any]:
    return {"type": "response.created", "sequence_number": sequence,
            "response": {"id": response_id, "object": "response", "status": "in_progress", "output": []}}


def message_item(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def completed_events(response_id: str, text: str = "done", item: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    item = item or message_item(text)
    return [
        created_event(response_id),
        {"type": "response.output_text.delta", "sequence_number": 1, "delta": text},
        {"type": "response.output_item.done", "sequence_number": 2, "output_index": 0, "item": item},
        {"type": "response.completed", "sequence_number": 3,
         "response": {"id": response_id, "object": "response", "status": "completed", "output": [item]}},
    ]


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


class Bridge:
    """A BridgeSession wired to a FakeClient and a FakeUpstream, with the client's frames as methods."""

    def __init__(self, **config: Any) -> None:
        self.client = FakeClient()
        self.upstream = FakeUpstream()
        self.session = BridgeSession(SessionConfig(UPSTREAM_URL, UpstreamSettings(), **config),
                                     [("Authorization", "Bearer test"), ("Host", "upstream.test")],
                                     self.client, self.upstream)  # type: ignore[arg-type]  # the fake pool

    def frame(self, frame: dict[str, Any] | str | bytes) -> None:
        self.session.on_client_text(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    def create(self, text: str = "hi", **fields: Any) -> None:
        self.frame({"type": "response.create", "model": "gpt-test", "input": [user(text)], **fields})

    async def started(self, text: str = "task", **fields: Any) -> FakeExchange:
        """A create whose response is under way as r1 (head and response.created delivered), once the loop has run."""
        self.create(text, **fields)
        run = self.upstream.last
        run.start()
        await turns()
        return run

    def steer(self, target: str, text: str = "also this") -> None:
        self.frame({"type": "response.steer", "previous_response_id": target, "input": [user(text)]})

    def lane_events(self, lane: str | None) -> list[dict[str, Any]]:
        return [e for e in self.client.events if e.get("stream_id") == lane]
