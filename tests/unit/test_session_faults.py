"""Faults inside a session, in memory: hostile client frames are 400 error frames, a bug ends the session with 1011."""

from __future__ import annotations

import pytest
from fakes import Bridge, in_loop, turns

HOSTILE = [
    '{"type":"response.create","model":"m","input":' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"type":"response.create","model":"m","input":"\\ud800"}',
    '{"type":"response.create","model":"m","generate":false,"input":"\\udfff"}',
    '{"type":"response.create","model":"\\ud800"}',
    '{"type":"response.create","model":"m","previous_response_id":"\\ud800"}',
    '{"type":"response.steer","previous_response_id":"r","input":["\\ud800"]}',
]


@pytest.mark.parametrize("frame", HOSTILE, ids=["deep", "surrogate", "prewarm", "model", "previous", "steer"])
@in_loop
async def test_a_frame_that_cannot_be_served_is_a_400_and_the_session_goes_on(frame: str) -> None:
    b = Bridge()
    b.frame(frame)
    [error] = b.client.events
    assert error["type"] == "error" and error["status"] == 400 and error["error"]["code"] == "invalid_json"
    assert not b.upstream.exchanges
    b.create("after it")
    b.upstream.last.complete("r1")
    await turns()
    assert b.client.types[-1] == "response.completed"


@in_loop
async def test_an_unexpected_exception_ends_the_session_with_1011() -> None:
    b = Bridge()
    closes: list[tuple[int, str]] = []
    b.client.close = lambda code, reason: closes.append((code, reason))  # type: ignore[attr-defined]

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    b.session._free_slot = broken  # type: ignore[method-assign]
    b.create("hi")
    b.upstream.last.complete("r1")
    await turns()
    assert closes == [(1011, "codexbridge internal error")]
    assert b.session.client_gone and b.session.closed.is_set()
