"""The SSE decoder: spec cases, and any split of the byte stream yields the same events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codexbridge.wire.sse import SseDecoder, SseEvent


def decode(chunks: list[bytes]) -> list[SseEvent]:
    d = SseDecoder()
    out: list[SseEvent] = []
    for c in chunks:
        out.extend(d.feed(c))
    return out


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: a\n\n", [SseEvent("", b"a")]),
        (b"event: x\ndata: {}\n\n", [SseEvent("x", b"{}")]),
        (b"data: a\r\n\r\n", [SseEvent("", b"a")]),
        (b"data: a\r\rdata: b\r\r", [SseEvent("", b"a"), SseEvent("", b"b")]),
        (b"data: 1\ndata: 2\n\n", [SseEvent("", b"1\n2")]),
        (b": comment\ndata: a\n: another\n\n", [SseEvent("", b"a")]),
        (b"data:nospace\n\n", [SseEvent("", b"nospace")]),
        (b"data:  two\n\n", [SseEvent("", b" two")]),
        (b"event: only-name\n\n", []),
        (b"data\n\n", [SseEvent("", b"")]),
        (b"id: 7\nretry: 10\nfoo: bar\ndata: a\n\n", [SseEvent("", b"a")]),
        (b"data: a\n\ndata: b", [SseEvent("", b"a")]),  # unterminated last event is not dispatched
        (b"\xef\xbb\xbfdata: bom\n\n", [SseEvent("", b"bom")]),
        (b"event: a\ndata: 1\n\ndata: 2\n\n", [SseEvent("a", b"1"), SseEvent("", b"2")]),
        (b'data: {"type":"x","t":"caf\xc3\xa9"}\n\n', [SseEvent("", b'{"type":"x","t":"caf\xc3\xa9"}')]),
    ],
)
def test_spec_cases(stream: bytes, expected: list[SseEvent]) -> None:
    assert decode([stream]) == expected


event_text = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)
events = st.lists(st.tuples(st.sampled_from(["", "response.output_text.delta", "error"]), event_text), max_size=12)
line_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def stream_and_splits(draw: st.DrawFn) -> tuple[bytes, list[SseEvent], list[int]]:
    evs = draw(events)
    eol = draw(line_ends)
    parts: list[bytes] = []
    expected: list[SseEvent] = []
    for name, data in evs:
        if draw(st.booleans()):
            parts.append(b": keepalive" + eol)
        if name:
            parts.append(b"event: " + name.encode() + eol)
        lines = data.encode().split(b"\n")
        for line in lines:
            parts.append(b"data: " + line + eol)
        parts.append(eol)
        expected.append(SseEvent(name, data.encode()))
    blob = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(blob)), max_size=20)))
    return blob, expected, cuts


@settings(max_examples=150, deadline=None)
@given(stream_and_splits())
def test_any_split_yields_same_events(case: tuple[bytes, list[SseEvent], list[int]]) -> None:
    blob, expected, cuts = case
    chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=False)]
    assert decode(chunks) == expected
    assert decode([blob]) == expected
    assert decode([bytes([b]) for b in blob]) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=10))
def test_arbitrary_bytes_split_invariant(blob: bytes, cuts: list[int]) -> None:
    cuts = sorted(c for c in cuts if c <= len(blob))
    chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=False)]
    assert decode(chunks) == decode([blob])
