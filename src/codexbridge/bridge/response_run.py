"""One response: a streaming POST to the upstream whose SSE events go to the client as frames."""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from codexbridge.bridge.upstream import (
    Connection,
    Exchange,
    Sink,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamSettings,
    UpstreamTimeout,
)
from codexbridge.responses.conversation import PreparedRequest, ResponseTracker
from codexbridge.responses.events import dumps
from codexbridge.responses.headers import error_headers
from codexbridge.responses.steering import Steer, client_owned, stream_prefix, tag
from codexbridge.responses.synthetic import error_frame, incomplete
from codexbridge.wire.http1 import ResponseHead
from codexbridge.wire.sse import SseDecoder

if TYPE_CHECKING:
    from codexbridge.recording.pipe import RemoteRecorder

log = logging.getLogger("codexbridge.bridge.session")

# Events whose content the bridge must read; every other event is forwarded without parsing.
_NEEDS_PARSE = re.compile(
    rb"response\.(?:output_item\.(?:done|added)|completed|failed|incomplete|cancelled|created)|\"error\""
)
_ITEM_DONE = b'"response.output_item.done"'
_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')
_MAX_ERROR_BODY = 64 * 1024


class UpstreamInvalidText(UpstreamError):
    """An upstream event that is not UTF-8: a WebSocket text frame must be (RFC 6455 8.1), and over HTTP Codex
    fails the stream on it too, so the response ends with an error frame instead."""


class Steered(UpstreamError):
    """The response was cut short (steered or interrupted): its POST is abandoned."""


class Downstream:
    """Where a session's frames go: emit() writes at once (one call per upstream read on the hot path);
    send() also waits while the client is slower than what it is sent. `close`, for a Codex client only: how a
    stream that ended before its terminal event reaches it (see ResponseRun.stream_failed)."""

    def __init__(self, emit: Callable[[list[bytes], bool], bool], congested: Callable[[], bool],
                 drained: Callable[[], Awaitable[bool]], close: Callable[[int, str], None] | None = None) -> None:
        self.emit = emit  # False: the client is gone
        self.congested = congested
        self.drained = drained
        self.close = close

    async def send(self, frames: list[bytes], synthetic: bool) -> None:
        if self.emit(frames, synthetic) and self.congested():
            await self.drained()


class ResponseRun:
    """Streams one upstream response to one lane; knows its id once the upstream names it.

    It settles once, through `on_settle`: at its terminal event (from the upstream read that carried it), or,
    when it has none (an error, a truncated stream, a cancel), when run() ends."""

    def __init__(self, prepared: PreparedRequest, lane: str | None, pool: UpstreamPool, settings: UpstreamSettings,
                 url: str, headers: list[tuple[str, str]], downstream: Downstream,
                 recorder: RemoteRecorder | None, on_settle: Callable[[ResponseRun], None],
                 on_answer: Callable[[list[tuple[str, str]]], list[bytes]] | None = None) -> None:
        self.prepared = prepared
        self.lane = lane
        self.tracker = ResponseTracker(prepared.full_input)
        self.steers: list[Steer] = []  # accepted steering input, committed by a successor
        self.cut_reason: str | None = None  # ended here, `incomplete`: "steered" (self.steers) or "interrupted"
        self.created: dict[str, Any] | None = None  # the upstream's response object from response.created
        self.open_items = 0  # output items added and not yet done
        self._waits_for_client = False  # an output item of this read is a client-owned call
        self.failed_status: int | None = None  # status of the error frame this response ended with
        self.error_frame: bytes | None = None  # that error frame (for the metrics)
        self.upstream_status: int | None = None  # the upstream's answer, once its response head is in
        self.client_left_first = False  # the client left before this response's terminal event (then drained)
        self.started = time.monotonic()
        self.first_event_at: float | None = None  # when its first event went to the client
        self.task: asyncio.Task[None] | None = None
        self._pool = pool
        self._settings = settings
        self._url = url
        self._headers = headers
        self._down = downstream
        self._recorder = recorder
        self._prefix = stream_prefix(lane) if lane is not None else None
        self._decoder = SseDecoder()
        self._conn: Connection | None = None  # the upstream connection, once its response head is in
        self._on_settle = on_settle
        self._on_answer = on_answer  # frames for the client from a streaming answer's headers, sent before its events
        self._exchange: Exchange | None = None
        self._begin_error: Exception | None = None
        self._draining: asyncio.Task[None] | None = None
        self._stream: asyncio.Future[None] | None = None  # the end of the body, while it streams
        self._last_event = b""  # the last event relayed (its sequence number is read only when the run is cut)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()  # validates reads that are not ASCII
        self._utf8_carry = False  # it holds the start of a character split between two reads
        self._unchecked = False  # the SSE decoder holds bytes of a read that failed that check: events are checked

    @property
    def response_id(self) -> str | None:
        return self.tracker.response_id

    @property
    def steered(self) -> bool:
        """Ended here for its steering input (its successor commits it)."""
        return self.cut_reason == "steered"

    def tagged(self, frames: list[bytes]) -> list[bytes]:
        prefix = self._prefix
        return frames if prefix is None else [tag(f, prefix) for f in frames]

    async def error(self, frame: bytes) -> None:
        self.failed_status = json.loads(frame).get("status")
        self.error_frame = frame
        await self._down.send(self.tagged([frame]), True)

    async def stream_failed(self, frame: bytes) -> None:
        """The upstream's event stream ended before a terminal event Codex acts on (it broke, went silent, was
        cut, or ended after an `error` event). Over HTTP, Codex sees its stream end and retries; a Codex client
        sees the same as from a native server: the WebSocket closes (1011) before response.completed, which
        it retries the same way, where an error frame's status would read as an HTTP status the upstream never
        answered. Any other client gets the error frame (the README's failure policy); `frame` is counted
        either way."""
        close = self._down.close
        if close is None:
            await self.error(frame)
            return
        parsed = json.loads(frame)
        self.failed_status = parsed.get("status")
        self.error_frame = frame
        message = parsed["error"].get("message") or "upstream stream failed"
        close(1011, _close_reason(message))

    def begin(self) -> None:
        """Writes the request at once when a kept-alive upstream connection is idle, so that the
        upstream starts working before this run's task and bookkeeping do; run() does the rest."""
        body = dumps(self.prepared.body)
        if self._recorder is not None:
            host = self._url.split("/", 3)[2] if "://" in self._url else ""
            self._recorder.upstream_request("POST", self._url, [("Host", host), *self._headers,
                                                                ("Content-Length", str(len(body)))], body)
        try:
            self._exchange = self._pool.send(self._settings, "POST", self._url, self._headers, body, self._head,
                                             keep_pieces=self._recorder is not None)
        except Exception as e:  # noqa: BLE001 - reported by run(), in the response's own task
            self._begin_error = e

    async def run(self) -> None:
        """The whole response, ending with an error frame when it failed before its terminal event; never raises
        but CancelledError. Settles it here when no terminal event did."""
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never let one response take the session or the proxy down
            log.exception("bridge error: %s", e)
            await self.error(error_frame(500, "bridge_error", f"codexbridge internal error: {e}"))
        finally:
            self._exchange = None  # it refers back to this run (its head callback): no cycle left for the collector
            if self.tracker.terminal is None:  # else it settled at the terminal event, in _on_body
                self._on_settle(self)

    async def _run(self) -> None:
        if self._exchange is None and self._begin_error is None:
            self.begin()
        try:
            if self._begin_error is not None:
                raise self._begin_error
            assert self._exchange is not None
            response = await self._pool.response(self._exchange)
        except UpstreamTimeout as e:
            self._record_end(f"timeout: {e}")
            await self.error(error_frame(504, "upstream_timeout", f"Upstream did not answer in time: {e}"))
            return
        except UpstreamError as e:
            self._record_end(f"unreachable: {e}")
            await self.error(error_frame(502, "upstream_unreachable", f"Upstream unreachable: {e}"))
            return
        streaming = self._head(response.head, response.connection) is not None
        ctype = response.head.get("content-type")
        failure: str | None = None
        try:
            if response.status != 200:
                await self.error(await self._upstream_error(response))
            elif not streaming:
                await self.error(error_frame(
                    502, "upstream_not_streaming", f"Upstream answered {ctype or 'no content type'}, not an event stream."))
            elif self.cut_reason is None:  # (it may have been cut before this task woke up)
                self._stream = response.stream(self._on_body)
                await self._stream
        except Steered:
            failure = self.cut_reason
        except UpstreamTimeout:
            failure = "timeout mid-stream"
            if self.tracker.terminal is None:  # after the terminal event the client has its answer
                await self.stream_failed(error_frame(504, "upstream_timeout", "Upstream went silent mid-stream."))
        except UpstreamInvalidText as e:
            failure = f"invalid event: {e}"
            if self.tracker.terminal is None:
                await self.stream_failed(error_frame(502, "upstream_invalid_utf8", str(e)))
        except UpstreamError as e:
            failure = f"stream broke: {e}"
            if self.tracker.terminal is None:
                await self.stream_failed(error_frame(502, "upstream_stream_error", f"Upstream stream broke: {e}"))
        except asyncio.CancelledError:
            # After the terminal event the response is whole: only the stream's tail went unread.
            failure = "cancelled" if self.tracker.terminal is None else None
            raise
        finally:
            self._stream = None
            if self._draining is not None:
                self._draining.cancel()
            if self.cut_reason is not None:
                failure = self.cut_reason
            response.release()
            self._record_end(failure)
        if failure is None and streaming and self.tracker.terminal is None:
            await self.stream_failed(
                error_frame(502, "upstream_stream_truncated", "Upstream stream ended before a terminal event."))
        elif failure is None and self.tracker.terminal == "error" and self._down.close is not None:
            # Codex ignores an `error` event without a status: over HTTP the end of the stream fails the request
            # (and Codex retries); over WebSocket the socket must end too, else it waits out its idle timeout.
            self._down.close(1011, "Upstream stream ended with an error event.")

    def _head(self, head: ResponseHead, conn: Connection) -> Sink | None:
        """Records the response head (once); an event stream's body goes straight to the relay."""
        if self._conn is None:
            self._conn = conn
            self.upstream_status = head.status
            if self._recorder is not None:
                self._recorder.upstream_response(head.status, head.headers)
            if self._on_answer is not None and head.status == 200 and "text/event-stream" in head.get("content-type"):
                frames = self._on_answer(head.headers)
                if frames:
                    self._down.emit(self.tagged(frames), True)
        if head.status == 200 and "text/event-stream" in head.get("content-type"):
            return self._on_body
        return None

    def _on_body(self, chunk: bytes) -> None:
        """Called for each network read of the event stream, from the upstream connection's callback."""
        if self.cut_reason is not None:  # cut: what the upstream still sends goes nowhere
            return
        rec = self._recorder
        if rec is not None:
            assert self._conn is not None
            pieces = self._conn.pieces  # as the upstream framed them, for a faithful replay
            if len(pieces) < 2 or sum(map(len, pieces)) != len(chunk):
                pieces = [chunk]
            for piece in pieces:
                rec.upstream_chunk(piece)
        tracker = self.tracker
        prefix = self._prefix
        batch: list[bytes] = []
        parse: list[bytes] = []  # events the history rules must read: after the batch went out
        needs_parse = _NEEDS_PARSE.search
        verbatim = prefix is None  # every event goes out as the upstream sent it
        checked = ((chunk.isascii() and not self._utf8_carry) or self._valid_utf8(chunk)) and not self._unchecked
        invalid: UpstreamInvalidText | None = None
        boundary = False  # a commit point of accepted steering input: the events after it are not sent
        for name, data in self._decoder.feed(chunk):
            if boundary:
                verbatim = False
                break
            if not checked and not data.isascii():
                invalid = _invalid_utf8(name, data)
                if invalid is not None:
                    verbatim = False  # the client gets only the events before it
                    break
            if data[:1] == b"[" and data.strip() == b"[DONE]":
                verbatim = False  # the end-of-stream sentinel of some gateways: not an event
                continue
            if name and not data.startswith(b'{"type"'):
                verbatim = False
                typed = _typed(name, data)
                if typed is None:
                    continue
                data = typed
                parse.append(data)
            elif needs_parse(data):
                parse.append(data)
                if self.steers and _ITEM_DONE in data:
                    boundary = self._commit_point(data)
            batch.append(data if prefix is None else tag(data, prefix))
        self._unchecked = not checked and self._decoder.pending
        if rec is not None and verbatim and batch:
            rec.relayed_next()
        if batch:
            self._last_event = batch[-1]
        sent = bool(batch) and self._down.emit(batch, False)
        if sent and self.first_event_at is None:
            self.first_event_at = time.monotonic()
        terminal = tracker.terminal
        for data in parse:
            try:
                event = json.loads(data)
            except ValueError:
                continue
            tracker.observe(event, len(data))
            self._observe(event)
        if terminal is None and tracker.terminal is not None:
            self._on_settle(self)  # right after the terminal event went out
        elif boundary and tracker.terminal is None:
            self.cut()
        if invalid is not None:
            raise invalid  # the connection fails with it: its task ends the response with an error frame
        if sent and self._draining is None and self._down.congested():
            assert self._conn is not None
            self._conn.pause()
            self._draining = asyncio.get_running_loop().create_task(self._resume_when_drained(self._conn))

    def _observe(self, event: dict[str, Any]) -> None:
        """What steering needs beyond the history: the open output items and the upstream's response object."""
        kind = event.get("type")
        if kind == "response.output_item.added":
            self.open_items += 1
        elif kind == "response.output_item.done":
            self.open_items = max(0, self.open_items - 1)
        elif kind == "response.created" and self.created is None and isinstance(event.get("response"), dict):
            self.created = event["response"]

    def _commit_point(self, item_done: bytes) -> bool:
        """Whether accepted steering input commits right after this output_item.done: the last open item ended
        and no output waits for the client (a response with a client-owned tool call runs to its end)."""
        try:
            event = json.loads(item_done)
        except ValueError:
            return False
        item = event.get("item") if event.get("type") == "response.output_item.done" else None
        if not isinstance(item, dict):
            return False
        if client_owned(item):
            self._waits_for_client = True
        return (self.open_items <= 1 and not self._waits_for_client
                and not any(client_owned(i) for i in self.tracker.output_items))

    def can_cut(self) -> bool:
        """At a safe output boundary now: no output item streaming, no output waiting for the client."""
        return (self.cut_reason is None and self.tracker.terminal is None and self.tracker.response_id is not None
                and self.open_items == 0 and not any(client_owned(i) for i in self.tracker.output_items))

    def cut(self, reason: str = "steered") -> None:
        """Ends the response here, as the server does for accepted steering input ("steered") or a client's
        response.interrupt ("interrupted"): `response.incomplete` with that reason and the output items done so
        far (an item still streaming is discarded), then it settles (the session starts a steered one's successor)
        and its POST is abandoned."""
        tracker = self.tracker
        self.cut_reason = reason
        tracker.terminal = "response.incomplete"
        assert tracker.response_id is not None
        created = self.created or {}
        last = _SEQUENCE.search(self._last_event)
        sequence = max(tracker.last_sequence, int(last.group(1)) if last else 0) + 1
        frame = incomplete(self.prepared.body, tracker.response_id, tracker.output_items, sequence, reason, base=created,
                           previous_response_id=self.prepared.previous_response_id)
        self._down.emit(self.tagged([frame]), True)
        self._on_settle(self)
        if self._conn is not None:
            self._conn.close()
        stream = self._stream
        if stream is not None and not stream.done():
            stream.set_exception(Steered(f"cut: {reason}"))

    def _valid_utf8(self, chunk: bytes) -> bool:
        """A read that is not plain ASCII, validated as a whole (a character may be split between two reads); when
        it is not valid, each of its events is checked on its own (the invalid bytes may be in a comment)."""
        try:
            self._utf8.decode(chunk)
        except UnicodeDecodeError:
            self._utf8.reset()
            self._utf8_carry = False
            return False
        self._utf8_carry = bool(self._utf8.getstate()[0])
        return True

    async def _resume_when_drained(self, conn: Connection) -> None:
        try:
            if await self._down.drained():
                conn.resume()
        finally:
            self._draining = None

    async def _upstream_error(self, response: UpstreamResponse) -> bytes:
        body = await response.read(_MAX_ERROR_BODY)
        if self._recorder is not None and body:
            self._recorder.upstream_chunk(body)
        error: dict[str, Any] | None = None
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                error = parsed["error"]
        except ValueError:
            pass
        status = response.status
        if error is None:
            text = body.decode("utf-8", "replace").strip()[:500]
            error = {
                "type": "server_error" if status >= 500 else "invalid_request_error",
                "code": f"upstream_http_{status}",
                "message": text or f"Upstream answered HTTP {status}.",
            }
        return error_frame(status, "", "", error=error, headers=error_headers(response.headers))

    def _record_end(self, error: str | None) -> None:
        if self._recorder is not None:
            self._recorder.upstream_end(error)


def _close_reason(message: str) -> str:
    """A close frame's reason: at most 123 bytes of UTF-8 (RFC 6455 5.5)."""
    data = message.encode()
    return message if len(data) <= 123 else data[:120].decode("utf-8", "ignore") + "..."


def _invalid_utf8(name: str, data: bytes) -> UpstreamInvalidText | None:
    try:
        data.decode()
    except UnicodeDecodeError as e:
        return UpstreamInvalidText(
            f"Upstream event {name or '(unnamed)'} is not valid UTF-8 ({e.reason} at byte {e.start}: "
            f"{data[e.start:e.start + 4]!r}); the response ends here.")
    return None


def _typed(name: str, data: bytes) -> bytes | None:
    """An event whose JSON has no 'type' gets its SSE event name; a sentinel or non-JSON is dropped."""
    if data.strip() == b"[DONE]":
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        log.warning("dropping a non-JSON SSE event %r", name)
        return None
    if isinstance(obj, dict) and "type" not in obj:
        return dumps({"type": name, **obj})
    return data
