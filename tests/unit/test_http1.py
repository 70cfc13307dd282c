"""The upstream client's HTTP/1.1 response parser: framings, any split of the bytes, errors."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codexbridge.wire.http1 import ProtocolError, ResponseParser, build_request


def feed_in_pieces(raw: bytes, cuts: list[int], eof: bool = False) -> tuple[ResponseParser, bytes]:
    parser = ResponseParser()
    body = b""
    last = 0
    for cut in sorted(set(c % (len(raw) + 1) for c in cuts)) + [len(raw)]:
        body += parser.feed(raw[last:cut])
        last = cut
    if eof:
        body += parser.eof()
    return parser, body


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = b"", 0
    for size in sizes:
        piece = body[pos:pos + max(1, size)]
        if not piece:
            break
        out += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
        pos += len(piece)
    if pos < len(body):
        out += b"%X\r\n" % (len(body) - pos) + body[pos:] + b"\r\n"
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
bodies = st.binary(min_size=0, max_size=3000)
cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@settings(max_examples=200, deadline=None)
@given(body=bodies, sizes=st.lists(st.integers(min_value=1, max_value=700), max_size=8), cuts=cut_lists)
def test_chunked_body_survives_any_split(body: bytes, sizes: list[int], cuts: list[int]) -> None:
    raw = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, sizes)
    parser, got = feed_in_pieces(raw, cuts)
    assert got == body
    assert parser.done and parser.keep_alive and not parser.surplus
    assert parser.head is not None and parser.head.status == 200
    assert parser.head.get("content-type") == "text/event-stream"


@settings(max_examples=100, deadline=None)
@given(body=bodies, cuts=cut_lists)
def test_content_length_and_close_delimited_bodies(body: bytes, cuts: list[int]) -> None:
    parser, got = feed_in_pieces(HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body + b"EXTRA", cuts)
    assert got == body and parser.done and parser.surplus == b"EXTRA"
    parser, got = feed_in_pieces(HEAD + b"\r\n" + body, cuts, eof=True)
    assert got == body and parser.done and not parser.keep_alive


def test_informational_responses_are_skipped_and_gzip_is_decoded() -> None:
    body = b"data: {}\n\n" * 50
    raw = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + HEAD
           + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gzip.compress(body)) + gzip.compress(body))
    parser, got = feed_in_pieces(raw, [3, 30, 77, 120])
    assert got == body and parser.head is not None and parser.head.status == 200


def test_connection_close_and_http10_are_not_kept_alive() -> None:
    parser, _ = feed_in_pieces(b"HTTP/1.1 429 Too Many\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", [])
    assert parser.done and not parser.keep_alive and parser.head is not None and parser.head.reason == "Too Many"
    parser, _ = feed_in_pieces(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", [])
    assert parser.done and not parser.keep_alive


@pytest.mark.parametrize("raw", [
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\n\r\n",
])
def test_malformed_responses_raise(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResponseParser().feed(raw)


def test_a_body_cut_short_raises_at_eof() -> None:
    for raw in (HEAD + b"Content-Length: 10\r\n\r\nabc", HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nab", b"HTTP/1.1 2"):
        parser = ResponseParser()
        parser.feed(raw)
        with pytest.raises(ProtocolError):
            parser.eof()


def test_build_request() -> None:
    raw = build_request("POST", "/v1/responses", "gw:8443", [("Authorization", "Bearer x")], b"{}")
    assert raw == (b"POST /v1/responses HTTP/1.1\r\nHost: gw:8443\r\nAuthorization: Bearer x\r\n"
                   b"Content-Length: 2\r\n\r\n{}")
    assert build_request("CONNECT", "gw:443", "gw:443", [], None) == b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n"
