"""One response: a streaming POST to the upstream whose SSE events go to the client as frames."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx

from .conversation import PreparedRequest, ResponseTracker
from .frames import dumps, error_frame
from .headers import error_headers
from .sse import SseDecoder
from .steering import Steer, stream_prefix, tag

if TYPE_CHECKING:
    from .record_pipe import RemoteRecorder

log = logging.getLogger("codexbridge.session")

# Events whose content the bridge must read; every other event is forwarded without parsing.
_NEEDS_PARSE = re.compile(
    rb"response\.(?:output_item\.done|completed|failed|incomplete|cancelled|created)|\"error\""
)
_MAX_ERROR_BODY = 64 * 1024

Send = Callable[[list[bytes], bool], Awaitable[None]]


class ResponseRun:
    """Streams one upstream response to one lane; knows its id once the upstream names it."""

    def __init__(self, prepared: PreparedRequest, lane: str | None, client: httpx.AsyncClient, url: str,
                 headers: list[tuple[str, str]], send: Send, recorder: RemoteRecorder | None) -> None:
        self.prepared = prepared
        self.lane = lane
        self.tracker = ResponseTracker(prepared.full_input)
        self.steers: list[Steer] = []  # accepted steering input, committed by a successor
        self.failed_status: int | None = None  # status of the error frame this response ended with
        self.task: asyncio.Task[None] | None = None
        self._client = client
        self._url = url
        self._headers = headers
        self._send = send
        self._recorder = recorder
        self._prefix = stream_prefix(lane) if lane is not None else None

    @property
    def response_id(self) -> str | None:
        return self.tracker.response_id

    def tagged(self, frames: list[bytes]) -> list[bytes]:
        prefix = self._prefix
        return frames if prefix is None else [tag(f, prefix) for f in frames]

    async def error(self, frame: bytes) -> None:
        self.failed_status = json.loads(frame).get("status")
        await self._send(self.tagged([frame]), True)

    async def run(self) -> None:
        body = dumps(self.prepared.body)
        request = self._client.build_request("POST", self._url, headers=self._headers, content=body)
        rec = self._recorder
        if rec is not None:
            rec.upstream_request("POST", self._url, request.headers.multi_items(), body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as e:
            self._record_end(f"timeout: {e!r}")
            await self.error(error_frame(504, "upstream_timeout", f"Upstream did not answer in time: {e!r}"))
            return
        except httpx.HTTPError as e:
            self._record_end(f"unreachable: {e!r}")
            await self.error(error_frame(502, "upstream_unreachable", f"Upstream unreachable: {e!r}"))
            return
        if rec is not None:
            rec.upstream_response(response.status_code, response.headers.multi_items())
        failure: str | None = None
        ctype = response.headers.get("content-type", "")
        streaming = response.status_code == 200 and "text/event-stream" in ctype
        try:
            if response.status_code != 200:
                await self.error(await self._upstream_error(response))
            elif not streaming:
                await self.error(error_frame(
                    502, "upstream_not_streaming", f"Upstream answered {ctype or 'no content type'}, not an event stream."))
            else:
                await self._relay(response)
        except httpx.TimeoutException:
            failure = "timeout mid-stream"
            await self.error(error_frame(504, "upstream_timeout", "Upstream went silent mid-stream."))
        except httpx.HTTPError as e:
            failure = f"stream broke: {e!r}"
            await self.error(error_frame(502, "upstream_stream_error", f"Upstream stream broke: {e!r}"))
        except asyncio.CancelledError:
            failure = "cancelled"
            raise
        finally:
            await response.aclose()
            self._record_end(failure)
        if failure is None and streaming and self.tracker.terminal is None:
            await self.error(error_frame(502, "upstream_stream_truncated", "Upstream stream ended before a terminal event."))

    async def _relay(self, response: httpx.Response) -> None:
        decoder = SseDecoder()
        needs_parse = _NEEDS_PARSE.search
        tracker = self.tracker
        prefix = self._prefix
        rec = self._recorder
        async for chunk in response.aiter_bytes():
            if rec is not None:
                rec.upstream_chunk(chunk)
            batch: list[bytes] = []
            for event in decoder.feed(chunk):
                data = event.data
                if event.event and not data.startswith(b'{"type"'):
                    typed = _typed(event.event, data)
                    if typed is None:
                        continue
                    data = typed
                    tracker.observe(json.loads(data), len(data))
                elif needs_parse(data):
                    try:
                        tracker.observe(json.loads(data), len(data))
                    except ValueError:
                        pass
                batch.append(data if prefix is None else tag(data, prefix))
            if batch:
                await self._send(batch, False)

    async def _upstream_error(self, response: httpx.Response) -> bytes:
        body = b""
        async for chunk in response.aiter_bytes():
            if self._recorder is not None:
                self._recorder.upstream_chunk(chunk)
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

    def _record_end(self, error: str | None) -> None:
        if self._recorder is not None:
            self._recorder.upstream_end(error)


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
