"""The fast client-frame reader: same frames as wsproto for the common shapes, and a clean hand-over
(at the first byte of the first frame it does not handle) for everything else."""

from __future__ import annotations

import wsproto.events as wse
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.frame_protocol import FrameProtocol, Opcode

from codexbridge.wire.wsread import BINARY, PING, PONG, TEXT, FastReader, pong_frame


def client_frames(*events: wse.Event) -> bytes:
    """What a real (masking) client sends."""
    client = Connection(ConnectionType.CLIENT)
    return b"".join(client.send(e) for e in events)


def feed_split(reader: FastReader, raw: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    out, last = [], 0
    for cut in sorted({c % (len(raw) + 1) for c in cuts}) + [len(raw)]:
        out += [(f.opcode, f.payload) for f in reader.feed(raw[last:cut])]
        last = cut
    return out


messages = st.lists(st.one_of(st.text(max_size=300).map(lambda t: ("t", t)),
                              st.binary(max_size=70_000).map(lambda b: ("b", b)),
                              st.binary(max_size=125).map(lambda b: ("p", b))), max_size=6)


@settings(max_examples=150, deadline=None)
@given(items=messages, cuts=st.lists(st.integers(min_value=0, max_value=200_000), max_size=10))
def test_common_frames_decode_under_any_split(items: list[tuple[str, object]], cuts: list[int]) -> None:
    events: list[wse.Event] = []
    expected: list[tuple[int, bytes]] = []
    for kind, value in items:
        if kind == "t":
            events.append(wse.TextMessage(str(value)))
            expected.append((TEXT, str(value).encode()))
        elif kind == "b":
            events.append(wse.BytesMessage(bytes(value)))  # type: ignore[arg-type]
            expected.append((BINARY, bytes(value)))  # type: ignore[arg-type]
        else:
            events.append(wse.Ping(bytes(value)))  # type: ignore[arg-type]
            expected.append((PING, bytes(value)))  # type: ignore[arg-type]
    reader = FastReader()
    assert feed_split(reader, client_frames(*events), cuts) == expected
    assert not reader.stopped and reader.rest == b""


def test_text_is_decoded_and_pong_is_answered_unmasked() -> None:
    reader = FastReader()
    (frame,) = reader.feed(client_frames(wse.TextMessage('{"type":"response.create","x":"é"}')))
    assert frame.text == '{"type":"response.create","x":"é"}'
    (pong,) = reader.feed(client_frames(wse.Pong(b"abc")))
    assert pong.opcode == PONG and pong.payload == b"abc"
    assert pong_frame(b"xyz") == bytes((0x8A, 3)) + b"xyz"


def handed_over(tail: bytes, head: bytes = b"", limit: int = 0) -> FastReader:
    reader = FastReader(limit)
    ok = client_frames(wse.TextMessage("first"))
    frames = reader.feed(head + ok + tail)
    assert [f.text for f in frames] == ["first"]
    assert reader.stopped and reader.rest == tail, "the hand-over must start at the unhandled frame's first byte"
    # wsproto takes over from there and reads the same bytes cleanly
    server = Connection(ConnectionType.SERVER)
    server.receive_data(reader.rest)
    list(server.events())
    return reader


def test_hands_over_at_close_fragments_reserved_bits_and_limits() -> None:
    handed_over(client_frames(wse.CloseConnection(1000, "bye")))
    handed_over(client_frames(wse.TextMessage("par", message_finished=False), wse.TextMessage("t")))
    handed_over(client_frames(wse.TextMessage("x" * 500)), limit=100)
    unmasked = FrameProtocol(client=False, extensions=[]).send_data("from a server", True)
    handed_over(bytes(unmasked))
    rsv = bytearray(client_frames(wse.TextMessage("rsv")))
    rsv[0] |= 0x40
    handed_over(bytes(rsv))
    bad_utf8 = bytearray(FrameProtocol(client=True, extensions=[])._serialize_frame(Opcode.TEXT, b"\xff\xfe"))
    handed_over(bytes(bad_utf8))
    long_ping = bytearray(client_frames(wse.Ping(b"p")))
    long_ping[1] = 0x80 | 126
    handed_over(bytes(long_ping[:2]) + (200).to_bytes(2, "big") + bytes(204))


def test_server_frames_are_read_unmasked_and_their_wire_bytes_kept() -> None:
    server = Connection(ConnectionType.SERVER)
    wire = b"".join(server.send(e) for e in (wse.TextMessage("a" * 300), wse.Ping(b"p"), wse.BytesMessage(b"\x00\x01")))
    reader = FastReader(masked=False)
    frames = reader.feed(wire[:-1])
    assert [(f.opcode, f.payload) for f in frames] == [(TEXT, b"a" * 300), (PING, b"p")]
    assert reader.consumed == wire[:len(reader.consumed)] and len(reader.consumed) + len(reader.rest) == len(wire) - 1
    frames = reader.feed(wire[-1:])
    assert [(f.opcode, f.payload) for f in frames] == [(BINARY, b"\x00\x01")]
    assert reader.consumed + b"" == wire[-len(reader.consumed):]
    # a masked frame is not a server frame: hand-over
    handed = FastReader(masked=False)
    assert handed.feed(client_frames(wse.TextMessage("masked"))) == [] and handed.stopped
