"""Upstream events that are not UTF-8, in memory: the response ends with a 502 error frame naming the cause, and
the client never gets a text frame that is not UTF-8, however the upstream's reads are split."""

from __future__ import annotations

import asyncio
import json

from fakes import Bridge, completed_events, turns
from hypothesis import given, settings
from hypothesis import strategies as st

from codexbridge.responses.events import dumps


def sse(*events: dict[str, object]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (str(e["type"]).encode(), dumps(e)) for e in events)


def delta(text: str, sequence: int) -> dict[str, object]:
    return {"type": "response.output_text.delta", "sequence_number": sequence, "delta": text}


VALID = sse(*completed_events("r1", "héllo wörld 你好 🙂"))
CREATED, *REST = completed_events("r1", "x")
BROKEN = sse(CREATED, delta("fine ü", 1)) + b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"\xff\xfe"}\n\n' + sse(*REST)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


async def relay(reads: list[bytes]) -> Bridge:
    b = Bridge()
    b.create("hi")
    exchange = b.upstream.last
    exchange.respond()
    for read in reads:
        if exchange.conn.done.done():
            break  # failed: like a real connection, it reads nothing more
        exchange.conn.deliver(read)
    exchange.end()
    await turns()
    return b


def run(reads: list[bytes]) -> Bridge:
    return asyncio.run(asyncio.wait_for(relay(reads), 5))


def test_an_event_that_is_not_utf8_ends_the_response_with_a_502() -> None:
    b = run([BROKEN])
    types = b.client.types
    assert types == ["response.created", "response.output_text.delta", "error"]
    error = b.client.events[-1]
    assert error["status"] == 502 and error["error"]["code"] == "upstream_invalid_utf8"
    assert "not valid UTF-8" in error["error"]["message"] and "\\xff" in error["error"]["message"]
    for frame, _ in b.client.sent:
        frame.decode()


def test_invalid_bytes_outside_event_data_are_not_a_failure() -> None:
    b = run([b": comment \xff\n" + VALID])
    assert b.client.types[-1] == "response.completed"


def test_an_invalid_read_then_plain_ascii_still_finds_the_event() -> None:
    head = sse(CREATED) + b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"\xc3'
    b = run([head, b'("}\n\n' + sse(*REST)])  # \xc3 then '(' is not UTF-8; the second read alone is ASCII
    assert b.client.types == ["response.created", "error"]


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(VALID)), max_size=12))
def test_valid_text_split_anywhere_goes_through_unchanged(cuts: list[int]) -> None:
    b = run(split(VALID, cuts))
    assert [json.loads(dumps(e)) for e in b.client.events] == completed_events("r1", "héllo wörld 你好 🙂")


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(BROKEN)), max_size=12))
def test_invalid_text_split_anywhere_is_caught(cuts: list[int]) -> None:
    b = run(split(BROKEN, cuts))
    assert b.client.types == ["response.created", "response.output_text.delta", "error"]
    for frame, _ in b.client.sent:
        frame.decode()
