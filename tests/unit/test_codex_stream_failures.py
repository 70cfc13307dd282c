"""A Codex client learns of a stream that ended before its terminal event as from a native server: a close."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import UPSTREAM_URL, Bridge, FakeClient, FakeUpstream, created_event, in_loop, turns

from codexbridge.bridge.session import BridgeSession, SessionConfig
from codexbridge.bridge.upstream import UpstreamError, UpstreamSettings, UpstreamTimeout


class ClosingClient(FakeClient):
    def __init__(self) -> None:
        super().__init__()
        self.closes: list[tuple[int, str]] = []

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))


class CodexBridge(Bridge):
    """A session whose upgrade came from Codex (its originator header)."""

    def __init__(self) -> None:
        self.client = ClosingClient()
        self.upstream = FakeUpstream()
        self.session = BridgeSession(SessionConfig(UPSTREAM_URL, UpstreamSettings()),
                                     [("Authorization", "Bearer test"), ("originator", "codex_exec")],
                                     self.client, self.upstream)  # type: ignore[arg-type]  # the fake pool


def _break(exchange: Any) -> None:
    exchange.fail(UpstreamError("reset by peer"))


def _silence(exchange: Any) -> None:
    exchange.fail(UpstreamTimeout("silent"))


def _end(exchange: Any) -> None:
    exchange.end()


def _error_event(exchange: Any) -> None:
    exchange.events({"type": "error", "code": "server_error", "message": "boom"})
    exchange.end()


@pytest.mark.parametrize(("fail", "reason"), [
    (_break, "Upstream stream broke: reset by peer"),
    (_silence, "Upstream went silent mid-stream."),
    (_end, "Upstream stream ended before a terminal event."),
    (_error_event, "Upstream stream ended with an error event."),
])
@in_loop
async def test_a_codex_stream_that_ends_without_its_terminal_event_closes_the_websocket(fail: Any, reason: str) -> None:
    b = CodexBridge()
    b.create("task")
    run = b.upstream.last
    run.respond()
    run.events(created_event("r1"))
    fail(run)
    await turns()
    assert b.client.closes == [(1011, reason)]
    assert not [e for e in b.client.errors() if "status" in e], "no error frame whose status Codex reads as HTTP's"


@in_loop
async def test_a_codex_client_gets_an_upstream_status_before_any_event_as_an_error_frame() -> None:
    b = CodexBridge()
    b.create("task")
    b.upstream.last.respond(503, "application/json", b'{"error":{"type":"server_error","code":"x","message":"busy"}}')
    await turns()
    [error] = b.client.errors()
    assert error["status"] == 503 and not b.client.closes  # natively the same wrapped error: Codex retries it


@in_loop
async def test_other_clients_get_the_error_frame_and_keep_the_connection() -> None:
    b = Bridge()
    b.create("task")
    run = b.upstream.last
    run.start()
    run.end()
    await turns()
    [error] = b.client.errors()
    assert error["error"]["code"] == "upstream_stream_truncated"
