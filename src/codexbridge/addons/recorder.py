"""The recorder addon: Codex traffic on the Responses path, in any form, one redacted JSON Lines file per session."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from mitmproxy import ctx, exceptions, http

from codexbridge import mitm
from codexbridge.addons.common import (
    RECORDER,
    CodexAddon,
    codex_post,
    registry,
    tap_event_stream,
    upstream_url,
    websocket_starting,
)
from codexbridge.recording.pipe import RecordingSink, RemoteRecorder
from codexbridge.recording.schema import HttpMessage, Redactor


class Recorder(CodexAddon):
    """Records HTTP+SSE exchanges, WebSocket sessions relayed by mitmproxy, and sessions the bridge answers
    (when the bridge is loaded too), in the format `codexbridge replay` serves."""

    concern = RECORDER

    def __init__(self) -> None:
        super().__init__()
        self.sink = RecordingSink()
        self.http_recorders: dict[str, RemoteRecorder] = {}

    def load(self, loader) -> None:
        loader.add_option(
            "codexbridge_record", str, "",
            "A directory to record every session on the bridged path into, one JSON Lines file per "
            "WebSocket session (bridge and passthrough) or HTTP+SSE exchange; empty disables recording. "
            "Secrets are redacted before anything is written; files are created with mode 0600.",
        )
        loader.add_option(
            "codexbridge_record_redact", Sequence[str], [],
            "Extra regular expressions whose matches are replaced by <redacted> in recordings, on top of "
            "the built-in ones (Authorization, Cookie and API-key headers; sk-..., bearer tokens, JWTs).",
        )
        loader.add_option(
            "codexbridge_record_elide", int, 0,
            "In recordings, replace every JSON string longer than this many characters by a marker with "
            "its length and SHA-256 (replay stays exact on such files); 0 keeps everything.",
        )
        super().load(loader)

    def configure(self, updated: set[str]) -> None:
        super().configure(updated)
        opts = ctx.options
        if "codexbridge_record" in updated and opts.codexbridge_record:
            try:
                os.makedirs(opts.codexbridge_record, mode=0o700, exist_ok=True)
            except OSError as e:
                raise exceptions.OptionsError(f"codexbridge_record: cannot create {opts.codexbridge_record}: {e}") from e
            if not os.access(opts.codexbridge_record, os.W_OK | os.X_OK):
                raise exceptions.OptionsError(f"codexbridge_record: {opts.codexbridge_record} is not writable.")
        if "codexbridge_record_redact" in updated:
            for pattern in opts.codexbridge_record_redact:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise exceptions.OptionsError(f"codexbridge_record_redact: bad pattern {pattern!r}: {e}") from e
            Redactor(opts.codexbridge_record_redact)  # the patterns must also combine
        if "codexbridge_record_elide" in updated and opts.codexbridge_record_elide < 0:
            raise exceptions.OptionsError("codexbridge_record_elide must be 0 (off) or positive.")

    def _recording(self) -> bool:
        return bool(ctx.options.codexbridge_record) and self.active and not registry.bridge_off()

    def open(self, flow: http.HTTPFlow, mode: str, upstream: str) -> RemoteRecorder:
        req = flow.request
        return self.sink.session(
            ctx.options.codexbridge_record, mode, upstream,
            HttpMessage(method=req.method, url=req.pretty_url, headers=list(req.headers.items(multi=True))),
            list(ctx.options.codexbridge_record_redact), ctx.options.codexbridge_record_elide, label=flow.id[:8],
        )

    # -- WebSocket sessions -----------------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        rec = self.http_recorders.pop(flow.id, None)
        if rec is not None:
            if flow.response is not None and not flow.response.stream and flow.response.raw_content:
                rec.upstream_chunk(flow.response.raw_content)
            rec.upstream_end()
            rec.complete()
        elif self._recording() and websocket_starting(flow):
            self.plan_websocket(flow)

    def plan_websocket(self, flow: http.HTTPFlow) -> None:
        if not self._recording():
            return
        plan = mitm.plan_of(flow)
        if plan.recorder is not None:
            return
        if plan.hooks is not None:  # answered by the bridge: it records the upstream side through the same recorder
            meta = flow.metadata.get("codexbridge") or {}
            plan.recorder = self.open(flow, "bridge", meta.get("upstream") or upstream_url(flow))
        else:
            plan.recorder = self.open(flow, "passthrough", flow.request.pretty_url)

    # -- HTTP + SSE (Codex in HTTP mode) ----------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if not codex_post(flow) or not self._recording():
            return
        rec = self.open(flow, "http", upstream_url(flow))
        req = flow.request
        rec.upstream_request(req.method, upstream_url(flow), req.headers.items(multi=True), req.raw_content or b"")
        self.http_recorders[flow.id] = rec

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        rec = self.http_recorders.get(flow.id)
        if response is None or rec is None:
            return
        rec.upstream_response(response.status_code, response.headers.items(multi=True))
        tap_event_stream(response, rec.upstream_chunk)  # or, when it is not streamed, response() records the body

    def error(self, flow: http.HTTPFlow) -> None:
        rec = self.http_recorders.pop(flow.id, None)
        if rec is not None:
            rec.error("proxy", flow.error.msg if flow.error else "flow error")
            rec.complete()
        super().error(flow)

    def done(self) -> None:
        self.http_recorders.clear()
        self.sink.close()  # sessions still open are marked as ended by shutdown
        self.unload()
