"""One bridged WebSocket: client frames in, one streaming POST per response.create, events out."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from .conversation import ClientFrameError, Conversation, PreparedRequest, ResponseTracker, validate_client_frame
from .frames import dumps, error_frame, synthetic_prewarm, synthetic_response_id
from .headers import error_headers, upstream_request_headers
from .sse import SseDecoder
from .upstream import UpstreamPool, UpstreamSettings

if TYPE_CHECKING:
    from .recorder import SessionRecorder

log = logging.getLogger("codexbridge.session")

# Events whose content the bridge must read; every other event is forwarded without parsing.
_NEEDS_PARSE = re.compile(
    rb"response\.(?:output_item\.done|completed|failed|incomplete|cancelled|created)|\"error\""
)
_MAX_ERROR_BODY = 64 * 1024


class ClientChannel(Protocol):
    """The downstream side, implemented by the mitmproxy glue."""

    def send(self, frames: list[bytes], synthetic: bool = False) -> Awaitable[bool]:
        """Sends text frames in order; resolves False when the client cannot be written to."""

    def response_state(self, in_flight: bool) -> None:
        """A response started or ended (the text keepalive runs only in between)."""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    upstream_url: str
    settings: UpstreamSettings
    on_disconnect: str = "cancel"  # or "drain"
    max_responses: int = 8
    max_frame_bytes: int = 0


@dataclass(slots=True)
class SessionStats:
    started: float
    client_frames: int = 0
    server_frames: int = 0
    server_bytes: int = 0
    responses: int = 0
    errors: int = 0


class BridgeSession:
    """Serves one client connection; never raises into the proxy."""

    def __init__(
        self,
        config: SessionConfig,
        handshake_headers: list[tuple[str, str]],
        channel: ClientChannel,
        pool: UpstreamPool,
    ) -> None:
        self.config = config
        self.channel = channel
        self.pool = pool
        self.request_headers = upstream_request_headers(handshake_headers)
        self.conversation = Conversation(config.max_responses)
        self.stats = SessionStats(started=time.monotonic())
        self.client_gone = False
        self._task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.max_frame_bytes = config.max_frame_bytes
        self.closed_callback: Callable[[BridgeSession], None] | None = None
        self.recorder: SessionRecorder | None = None

    # -- client side ------------------------------------------------------------------------

    def on_client_text(self, text: str | bytes) -> list[bytes]:
        """Handles one complete client text frame; returns frames to send right away."""
        self.stats.client_frames += 1
        try:
            frame = validate_client_frame(json.loads(text))
        except json.JSONDecodeError as e:
            return [self._client_error(ClientFrameError("invalid_json", f"Client frame is not valid JSON: {e}"))]
        except ClientFrameError as e:
            return [self._client_error(e)]
        if frame["type"] != "response.create":
            log.debug("ignoring client event %r", frame["type"])
            return []
        if self._task is not None and not self._task.done():
            return [
                self._client_error(
                    ClientFrameError(
                        "response_already_in_progress",
                        "A response is already in progress on this connection; wait for its terminal event.",
                    )
                )
            ]
        try:
            prepared = self.conversation.prepare(frame)
        except ClientFrameError as e:
            return [self._client_error(e)]
        log.debug(
            "stage=response_create previous_response_id=%s new_items=%d full_items=%d generate=%s",
            prepared.previous_response_id, len(frame.get("input") or []), len(prepared.full_input), prepared.generate,
        )
        if not prepared.generate:
            response_id = synthetic_response_id(dumps(prepared.body))
            self.conversation.remember(response_id, prepared.full_input)
            self.stats.responses += 1
            frames = synthetic_prewarm(prepared.body, response_id)
            self._count(frames)
            return frames
        self._task = asyncio.get_running_loop().create_task(self._respond(prepared), name="codexbridge response")
        return []

    def on_client_error(self, error: ClientFrameError) -> list[bytes]:
        """A frame the glue rejected before parsing (binary, oversized)."""
        self.stats.client_frames += 1
        return [self._client_error(error)]

    def on_client_closed(self) -> None:
        """The client connection ended (close frame or dropped socket)."""
        if self.client_gone:
            return
        self.client_gone = True
        task = self._task
        if task is not None and not task.done():
            if self.config.on_disconnect == "drain":
                log.info("client left mid-response; draining the upstream to its end")
            else:
                task.cancel()
        else:
            self._finish()

    # -- upstream side ----------------------------------------------------------------------

    async def _respond(self, prepared: PreparedRequest) -> None:
        tracker = ResponseTracker(prepared.full_input)
        self.channel.response_state(True)
        try:
            await self._stream(prepared, tracker)
        except asyncio.CancelledError:
            log.debug("upstream request cancelled")
        except Exception as e:  # never let one session take the proxy down
            log.exception("bridge error: %s", e)
            await self._send_error([error_frame(500, "bridge_error", f"codexbridge internal error: {e}")])
        finally:
            self.channel.response_state(False)
            self.stats.responses += 1
            if self.client_gone:
                self._finish()

    async def _stream(self, prepared: PreparedRequest, tracker: ResponseTracker) -> None:
        client = self.pool.client(self.config.settings)
        body = dumps(prepared.body)
        request = client.build_request("POST", self.config.upstream_url, headers=self.request_headers, content=body)
        rec = self.recorder
        if rec is not None:
            rec.upstream_request("POST", self.config.upstream_url, request.headers.multi_items(), body)
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as e:
            self._record_end(f"timeout: {e!r}")
            await self._send_error([error_frame(504, "upstream_timeout", f"Upstream did not answer in time: {e!r}")])
            return
        except httpx.HTTPError as e:
            self._record_end(f"unreachable: {e!r}")
            await self._send_error([error_frame(502, "upstream_unreachable", f"Upstream unreachable: {e!r}")])
            return
        if rec is not None:
            rec.upstream_response(response.status_code, response.headers.multi_items())
        error: str | None = None
        ctype = response.headers.get("content-type", "")
        try:
            if response.status_code != 200:
                await self._send_error([await self._upstream_error(response)])
                return
            if "text/event-stream" not in ctype:
                await self._send_error(
                    [error_frame(502, "upstream_not_streaming", f"Upstream answered {ctype or 'no content type'}, not an event stream.")]
                )
                return
            await self._relay(response, tracker)
        except httpx.TimeoutException:
            error = "timeout mid-stream"
            await self._send_error([error_frame(504, "upstream_timeout", "Upstream went silent mid-stream.")])
        except httpx.HTTPError as e:
            error = f"stream broke: {e!r}"
            await self._send_error([error_frame(502, "upstream_stream_error", f"Upstream stream broke: {e!r}")])
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        finally:
            await response.aclose()
            self._record_end(error)
        if error is not None or response.status_code != 200 or "text/event-stream" not in ctype:
            return
        if tracker.terminal is None:
            await self._send_error(
                [error_frame(502, "upstream_stream_truncated", "Upstream stream ended before a terminal event.")]
            )
        elif tracker.terminal == "response.completed" and tracker.response_id:
            self.conversation.remember(tracker.response_id, tracker.history)

    async def _relay(self, response: httpx.Response, tracker: ResponseTracker) -> None:
        decoder = SseDecoder()
        needs_parse = _NEEDS_PARSE.search
        rec = self.recorder
        async for chunk in response.aiter_bytes():
            if rec is not None:
                rec.upstream_chunk(chunk)
            batch: list[bytes] = []
            for event in decoder.feed(chunk):
                data = event.data
                if event.event and not data.startswith(b'{"type"'):
                    data = self._typed(event.event, data)
                    if data is None:
                        continue
                    tracker.observe(json.loads(data))
                elif needs_parse(data):
                    try:
                        tracker.observe(json.loads(data))
                    except ValueError:
                        pass
                batch.append(data)
            if batch:
                await self._send(batch)

    def _typed(self, name: str, data: bytes) -> bytes | None:
        """An event whose JSON has no 'type' gets its SSE event name; non-JSON is dropped."""
        if data.strip() == b"[DONE]":
            return None
        try:
            obj = json.loads(data)
        except ValueError:
            log.warning("dropping a non-JSON SSE event %r", name)
            return None
        if isinstance(obj, dict) and "type" not in obj:
            obj = {"type": name, **obj}
            return dumps(obj)
        return data

    async def _upstream_error(self, response: httpx.Response) -> bytes:
        body = b""
        async for chunk in response.aiter_bytes():
            if self.recorder is not None:
                self.recorder.upstream_chunk(chunk)
            body += chunk
            if len(body) > _MAX_ERROR_BODY:
                break
        error: dict[str, Any] | None = None
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                error = parsed["error"]
        except ValueError:
            pass
        status = response.status_code
        if error is None:
            text = body.decode("utf-8", "replace").strip()[:500]
            error = {
                "type": "server_error" if status >= 500 else "invalid_request_error",
                "code": f"upstream_http_{status}",
                "message": text or f"Upstream answered HTTP {status}.",
            }
        return error_frame(status, "", "", error=error, headers=error_headers(response.headers.multi_items()))

    # -- helpers ----------------------------------------------------------------------------

    def _client_error(self, error: ClientFrameError) -> bytes:
        self.stats.errors += 1
        frame = error_frame(error.status, error.code, error.message, param=error.param)
        self._count([frame])
        return frame

    def _count(self, frames: list[bytes]) -> None:
        self.stats.server_frames += len(frames)
        self.stats.server_bytes += sum(map(len, frames))

    async def _send_error(self, frames: list[bytes]) -> None:
        self.stats.errors += 1
        await self._send(frames, synthetic=True)

    async def _send(self, frames: list[bytes], synthetic: bool = False) -> None:
        if self.client_gone:
            return
        self._count(frames)
        if not await self.channel.send(frames, synthetic) and not self.client_gone:
            self.on_client_closed()

    def _record_end(self, error: str | None) -> None:
        if self.recorder is not None:
            self.recorder.upstream_end(error)

    def _finish(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self.recorder is not None:
            self.recorder.complete()
        if self.closed_callback is not None:
            self.closed_callback(self)
        s = self.stats
        log.debug(
            "stage=bridge_end frames_in=%d frames_out=%d bytes_out=%d responses=%d errors=%d duration=%.3fs",
            s.client_frames, s.server_frames, s.server_bytes, s.responses, s.errors, time.monotonic() - s.started,
        )
