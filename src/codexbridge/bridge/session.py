"""One bridged WebSocket: client frames in; lanes, steering and one streaming POST per response out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, Protocol

from codexbridge.bridge.response_run import Downstream, ResponseRun
from codexbridge.bridge.upstream import UpstreamPool, UpstreamSettings
from codexbridge.responses import steering
from codexbridge.responses.conversation import (
    ClientFrameError,
    Conversation,
    PreparedRequest,
    parse_client_frame,
    validate_client_frame,
)
from codexbridge.responses.events import dumps, user_message
from codexbridge.responses.headers import upstream_request_headers
from codexbridge.responses.metadata import UpgradeMemory, answer_events, is_codex_client
from codexbridge.responses.steering import PendingSteers, Steer, SteerError
from codexbridge.responses.synthetic import error_frame, synthetic_prewarm, synthetic_response_id
from codexbridge.responses.turn_headers import request_headers

if TYPE_CHECKING:
    from codexbridge.recording.pipe import RemoteRecorder

log = logging.getLogger("codexbridge.bridge.session")


class ClientChannel(Protocol):
    """The client side, implemented by the mitmproxy glue (mitm.outbox.ClientOutbox)."""

    def send(self, frames: list[bytes], synthetic: bool = False) -> bool:
        """Sends text frames now, in order; False when the client cannot be written to."""

    def congested(self) -> bool:
        """More is buffered toward the client than it has read."""

    def drained(self) -> Awaitable[bool]:
        """Resolves when the client has read what was buffered; False when it is gone."""

    def response_state(self, in_flight: bool) -> None:
        """Responses started or all ended (the text keepalive runs only in between)."""

    def close(self, code: int, reason: str) -> None:
        """Closes the client connection; the session hears of it through on_client_closed."""


class ResponseMeter(Protocol):
    """What a session tells the metrics addon: each response once, when its task is over; client errors."""

    def response_ended(self, run: ResponseRun, client_gone: bool) -> None: ...
    def error_frame(self, frame: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionConfig:
    upstream_url: str
    settings: UpstreamSettings
    on_disconnect: str = "cancel"  # or "drain"
    max_responses: int = 8
    max_stored_bytes: int = 0
    max_frame_bytes: int = 0
    max_lanes: int = 32  # distinct named stream ids per connection
    max_active: int = 16  # responses streaming at once per connection; more wait their turn
    max_queued: int = 64  # creates waiting for a lane or an active slot
    upgrade_memory: UpgradeMemory | None = None  # what the upstream's answers said that Codex reads only at the 101


@dataclass(slots=True)
class SessionStats:
    started: float
    client_frames: int = 0
    server_frames: int = 0
    server_bytes: int = 0
    responses: int = 0
    errors: int = 0


@dataclass(slots=True)
class Lane:
    stream_id: str | None
    waiting: deque[PreparedRequest] = field(default_factory=deque)
    active: ResponseRun | None = None


class BridgeSession:
    """Serves one client connection; never raises into the proxy."""

    def __init__(self, config: SessionConfig, handshake_headers: Iterable[tuple[str, str]], channel: ClientChannel,
                 pool: UpstreamPool) -> None:
        self.config = config
        self.channel = channel
        self.pool = pool
        self._handshake = handshake_headers  # read when first needed (after the 101 went out)
        self.conversation = Conversation(config.max_responses, config.max_stored_bytes)
        self.stats = SessionStats(started=time.monotonic())
        self.max_frame_bytes = config.max_frame_bytes
        self.client_gone = False
        self.closed = asyncio.Event()
        self.closed_callback: Callable[[BridgeSession], None] | None = None
        self.recorder: RemoteRecorder | None = None
        self.meter: ResponseMeter | None = None  # the metrics addon's counters, told once per response
        self.lanes: dict[str | None, Lane] = {None: Lane(None)}
        self.runs: set[ResponseRun] = set()
        self.ready: deque[Lane] = deque()  # lanes with work waiting for an active slot
        self.pending_steers: dict[str, PendingSteers] = {}  # parent response id -> accepted input
        self._steer_ids = 0

    # The session's state from the handshake's headers, made when first used: a connection storm waits for each
    # upgrade's 101, not for this.

    def _from_handshake(self) -> None:
        """Both values from the handshake's headers at once; the headers are not kept (~2 KB per idle session)."""
        headers = list(self._handshake)
        self._handshake = ()
        self.__dict__["request_headers"] = upstream_request_headers(headers)
        self.__dict__["codex_client"] = is_codex_client(headers)

    @cached_property
    def request_headers(self) -> list[tuple[str, str]]:
        self._from_handshake()
        return self.__dict__["request_headers"]

    @cached_property
    def codex_client(self) -> bool:
        """Gets the Codex events of each POST answer."""
        self._from_handshake()
        return self.__dict__["codex_client"]

    @cached_property
    def downstream(self) -> Downstream:
        """Every frame to the client, relayed or made here, leaves through _emit (runs reach it through this)."""
        return Downstream(self._emit, self.channel.congested, self._drained,
                          self.channel.close if self.codex_client else None)

    # -- client side ------------------------------------------------------------------------

    def on_client_text(self, text: str | bytes) -> None:
        """Handles one complete client text frame; what it answers at once is sent before this returns."""
        self.stats.client_frames += 1
        try:
            frame = validate_client_frame(parse_client_frame(text))
        except ClientFrameError as e:
            self._client_error(e)
            return
        kind = frame["type"]
        if kind == "response.create":
            self._create(frame, len(text))
        elif kind == "response.steer":
            answer, run = self._steer(frame)
            self._emit([answer], True)
            if run is not None and run.can_cut():  # between output items: the commit point is now
                run.cut()
        elif kind == "response.interrupt":
            self._interrupt(frame)
        else:
            log.debug("ignoring client event %r", kind)

    def on_client_error(self, error: ClientFrameError) -> None:
        """A frame the glue rejected before parsing (binary, oversized)."""
        self.stats.client_frames += 1
        self._client_error(error)

    def on_client_closed(self) -> None:
        """The client connection ended (close frame or dropped socket)."""
        if self.client_gone:
            return
        self.client_gone = True
        for lane in self.lanes.values():
            lane.waiting.clear()
        live = [run for run in self.runs if run.task is not None and not run.task.done()]
        for run in live:
            run.client_left_first = run.tracker.terminal is None
        if not live:
            self._finish()
        elif self.config.on_disconnect == "drain":
            log.info("client left mid-response; draining the upstream to its end")
        else:
            for run in live:
                assert run.task is not None
                run.task.cancel()

    # -- response.create --------------------------------------------------------------------

    def _create(self, frame: dict[str, Any], size: int) -> None:
        lane_id = None
        try:
            lane_id = steering.check_stream_id(frame.get("stream_id"))
            lane = self._lane(lane_id)
            if lane_id is None and lane.active is not None:
                raise ClientFrameError("response_already_in_progress",
                                       "A response is already in progress on this connection; wait for its terminal event.")
            queued = sum(len(la.waiting) for la in self.lanes.values())
            if queued >= self.config.max_queued:
                raise ClientFrameError("too_many_queued_responses",
                                       f"{queued} responses are already waiting on this connection.", status=429)
            frame = self._with_pending_steers(frame)
            prepared = self.conversation.prepare({k: v for k, v in frame.items() if k != "stream_id"})
        except ClientFrameError as e:
            self._client_error(e, lane_id)
            return
        prepared.history_bytes += size
        log.debug(
            "stage=response_create lane=%s previous_response_id=%s new_items=%d full_items=%d generate=%s",
            lane_id, prepared.previous_response_id, len(frame.get("input") or []), len(prepared.full_input),
            prepared.generate,
        )
        if not prepared.generate and lane.active is None and not lane.waiting:
            self._emit(self._prewarm(prepared, lane_id), True)
            return
        lane.waiting.append(prepared)
        self._schedule(lane)

    def _lane(self, lane_id: str | None) -> Lane:
        lane = self.lanes.get(lane_id)
        if lane is None:
            if len(self.lanes) - 1 >= self.config.max_lanes:
                raise ClientFrameError("websocket_stream_limit_reached",
                                       f"This connection already uses {self.config.max_lanes} stream ids.")
            lane = self.lanes[lane_id] = Lane(lane_id)
        return lane

    def _prewarm(self, prepared: PreparedRequest, lane_id: str | None) -> list[bytes]:
        """A generate:false create is answered here, without the upstream: its frames, and its id remembered."""
        response_id = synthetic_response_id(dumps(prepared.body))
        self.conversation.remember(response_id, prepared.full_input, prepared.history_bytes, lane_id)
        self.stats.responses += 1
        frames = synthetic_prewarm(prepared.body, response_id, prepared.previous_response_id)
        if lane_id is not None:
            prefix = steering.stream_prefix(lane_id)
            frames = [steering.tag(f, prefix) for f in frames]
        return frames

    def _schedule(self, lane: Lane | None = None) -> None:
        """Starts waiting work: FIFO per lane, at most max_active responses at once."""
        if lane is not None and lane.active is None and lane.waiting and lane not in self.ready:
            self.ready.append(lane)
        while self.ready and len(self.runs) < self.config.max_active and not self.client_gone:
            ready = self.ready.popleft()
            if ready.active is not None or not ready.waiting:
                continue
            prepared = ready.waiting.popleft()
            if not prepared.generate:
                frames = self._prewarm(prepared, ready.stream_id)
                asyncio.get_running_loop().create_task(self._send(frames, True))
                if ready.waiting:
                    self.ready.append(ready)
                continue
            self._start(ready, prepared)

    def _start(self, lane: Lane, prepared: PreparedRequest) -> ResponseRun:
        # the request's own headers (its turn metadata, window, turn state) as HTTP-mode Codex sends them
        headers = request_headers(self.request_headers, prepared.own_headers, prepared.has_client_metadata)
        run = ResponseRun(prepared, lane.stream_id, self.pool, self.config.settings, self.config.upstream_url,
                          headers, self.downstream, self.recorder, partial(self._settle, lane), self._answer_frames)
        lane.active = run
        first = not self.runs
        self.runs.add(run)
        run.begin()  # the request goes out before the task and the keepalive bookkeeping
        run.task = asyncio.get_running_loop().create_task(run.run(), name="codexbridge response")
        run.task.add_done_callback(partial(self._ended, run, lane))
        if first and run in self.runs:  # (an eager task may already have finished it)
            self.channel.response_state(True)
        return run

    def _answer_frames(self, headers: list[tuple[str, str]]) -> list[bytes]:
        """What a successful POST answer's headers tell Codex over HTTP, as the events that tell it over WebSocket
        (sent before the answer's own); the upgrade-only ones are kept for the next 101 to this upstream."""
        if self.config.upgrade_memory is not None:
            self.config.upgrade_memory.observe(self.config.upstream_url, headers)
        return [dumps(event) for event in answer_events(headers)] if self.codex_client else []

    def _ended(self, run: ResponseRun, lane: Lane, task: asyncio.Task[None]) -> None:
        """A response's task is over (its run settled it), or was cancelled, even before it started: its active
        slot goes to waiting work."""
        try:
            self._free_slot(run, lane, task)
        except Exception:  # noqa: BLE001 - fail() logs it; a bug here must end the session, not leave it hanging
            self.fail()

    def fail(self) -> None:
        """An unexpected exception (logged here) ends the session: its client is closed with 1011."""
        log.exception("stage=bridge_error; closing the session with 1011")
        self.channel.close(1011, "codexbridge internal error")
        try:
            self.on_client_closed()
        except Exception:  # already failing: the log has the first error
            log.exception("stage=bridge_error while ending the session")

    def _free_slot(self, run: ResponseRun, lane: Lane, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            log.debug("upstream request cancelled")
        elif task.exception() is not None:  # run() reports its own failures: this is a bug
            log.error("bridge error", exc_info=task.exception())
        self.stats.responses += 1
        if run.failed_status is not None:
            self.stats.errors += 1
        if self.meter is not None:
            self.meter.response_ended(run, run.client_left_first or (task.cancelled() and run.tracker.terminal is None))
        self.runs.discard(run)
        if not self.runs:
            self.channel.response_state(False)
        if self.client_gone:
            if not self.runs:
                self._finish()
        else:
            self._schedule(lane)

    def _settle(self, lane: Lane, run: ResponseRun) -> None:
        """Called by the run, once: at its terminal event (the client may send its next create right after it,
        even while the upstream body is still ending), or at its end when it had none. Stores a completed
        response, applies the same-lane eviction rule, settles steering, and frees the lane."""
        if lane.active is run:
            lane.active = None
        tracker = run.tracker
        parent = run.prepared.previous_response_id
        if (tracker.terminal == "response.completed" or run.cut_reason is not None) and tracker.response_id:
            nbytes = run.prepared.history_bytes + tracker.output_bytes
            self.conversation.remember(tracker.response_id, tracker.history, nbytes, lane.stream_id)
        elif parent and run.failed_status and self.conversation.lane_of(parent) == lane.stream_id:
            self.conversation.forget(parent)  # a same-lane continuation that errored evicts its parent
        if run.steers and not self.client_gone:
            self._settle_steers(run, lane)
        if not self.client_gone:
            self._schedule(lane)  # the lane's next create need not wait for the end of this body

    # -- response.steer ---------------------------------------------------------------------

    def _steer(self, frame: dict[str, Any]) -> tuple[bytes, ResponseRun | None]:
        """The answer to a response.steer: accepted (held for the running response, returned too), or failed."""
        raw_target = frame.get("previous_response_id")
        target = raw_target if isinstance(raw_target, str) else ""
        try:
            target, items = steering.steer_input(frame)
        except SteerError as e:
            return steering.failed(e.code, e.message, target, frame.get("input"), 0), None
        run = next((r for r in self.runs if r.response_id == target and r.tracker.terminal is None), None)
        if run is None:
            code, why = (("response_already_completed", "The response completed and no longer accepts steering input.")
                         if target in self.conversation else
                         ("response_not_found", f"No active response '{target}' on this connection."))
            return steering.failed(code, why, target, frame.get("input"), 0, lane=self.conversation.lane_of(target)), None
        if len(run.steers) >= 16:
            return steering.failed("too_many_pending_steers", "Too much steering input is pending for the response.",
                                   target, frame.get("input"), 0, lane=run.lane), None
        self._steer_ids += 1
        steer = Steer(f"steer_cb_{self._steer_ids}", target, items, run.lane, frame.get("input"))
        run.steers.append(steer)
        log.debug("stage=steer_accepted id=%s target=%s", steer.id, target)
        return steering.accepted(steer, run.tracker.last_sequence + 1), run

    def _interrupt(self, frame: dict[str, Any]) -> None:
        """Codex's response.interrupt (sent when its user steers a turn of a "Responses Lite" model): the response
        ends at once, `incomplete` with reason "interrupted" and its finished output items, and Codex continues
        from it. One the bridge cannot apply (not running here, another mode) is dropped, as the server answers
        it only with a non-terminal event, while an error event would end Codex's turn."""
        target = frame.get("response_id")
        run = next((r for r in self.runs if r.response_id == target and r.tracker.terminal is None), None)
        if run is None or frame.get("mode") != "discard_partial_items":
            log.debug("stage=interrupt_ignored response_id=%r mode=%r", target, frame.get("mode"))
            return
        log.debug("stage=interrupt response_id=%s", target)
        run.cut("interrupted")

    def _settle_steers(self, run: ResponseRun, lane: Lane) -> None:
        tracker = run.tracker
        seq = tracker.last_sequence + 1
        if (tracker.terminal != "response.completed" and not run.steered) or not tracker.response_id:
            self._emit([steering.failed("response_not_active", "The steered response did not complete.",
                                        s.target, s.raw_input, seq, s.id, s.lane) for s in run.steers], True)
            return
        stubs = [] if run.steered else steering.required_input(tracker.output_items)
        if stubs:
            # the response waits for client-owned results: the input waits for the client's continuation
            held = self.pending_steers.setdefault(tracker.response_id, PendingSteers(tracker.response_id, lane.stream_id))
            held.steers.extend(run.steers)
            self._emit([steering.pending(s, stubs, seq) for s in run.steers], True)
            return
        # an automatic successor (after the target completed, or was cut short at the commit point): the same
        # settings, the full history with the target's output so far, the queued input in order
        body = {k: v for k, v in run.prepared.body.items()}
        full = tracker.history + [item for s in run.steers for item in s.input]
        body["input"] = full
        successor = PreparedRequest(body, full, True, tracker.response_id,
                                    run.prepared.history_bytes + tracker.output_bytes,
                                    run.prepared.own_headers, run.prepared.has_client_metadata)
        log.debug("stage=steer_successor parent=%s steers=%d", tracker.response_id, len(run.steers))
        lane.waiting.appendleft(successor)

    def _with_pending_steers(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Accepted steering input held for this parent goes in front of the continuation's input."""
        parent = frame.get("previous_response_id")
        held = self.pending_steers.pop(parent, None) if isinstance(parent, str) else None
        if held is None:
            return frame
        queued = [item for s in held.steers for item in s.input]
        new_input = frame.get("input", [])
        if isinstance(new_input, str):
            new_input = [user_message(new_input)]
        return {**frame, "input": queued + list(new_input)}

    # -- helpers ----------------------------------------------------------------------------

    def _client_error(self, error: ClientFrameError, lane: str | None = None) -> None:
        self.stats.errors += 1
        frame = error_frame(error.status, error.code, error.message, param=error.param)
        if lane is not None:
            frame = steering.tag(frame, steering.stream_prefix(lane))
        if self.meter is not None:
            self.meter.error_frame(frame)
        self._emit([frame], True)

    def _emit(self, frames: list[bytes], synthetic: bool = False) -> bool:
        """The session's one way to its client: relayed batches (one per upstream read) and synthetic frames."""
        if self.client_gone:
            return False
        stats = self.stats
        stats.server_frames += len(frames)
        stats.server_bytes += sum(map(len, frames))
        if not self.channel.send(frames, synthetic):
            self.on_client_closed()
            return False
        return True

    async def _drained(self) -> bool:
        if await self.channel.drained():
            return True
        if not self.client_gone:
            self.on_client_closed()
        return False

    async def _send(self, frames: list[bytes], synthetic: bool = False) -> None:
        await self.downstream.send(frames, synthetic)

    def _finish(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        # what the session holds goes now, not when a collection finds it: the layer that refers to the session
        # lives in mitmproxy's reference cycles until then
        self.conversation.clear()
        self.pending_steers.clear()
        if self.recorder is not None:
            self.recorder.complete()
        if self.closed_callback is not None:
            self.closed_callback(self)
        s = self.stats
        log.debug(
            "stage=bridge_end frames_in=%d frames_out=%d bytes_out=%d responses=%d errors=%d duration=%.3fs",
            s.client_frames, s.server_frames, s.server_bytes, s.responses, s.errors, time.monotonic() - s.started,
        )
