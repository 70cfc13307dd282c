"""The recording spool and its worker, in one process: records written by RemoteRecorder, read by worker.serve."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from codexbridge.recording import worker, writer
from codexbridge.recording.pipe import COUNT, PROGRESS, RECORD, SPOOL_START, TO_CLIENT_RELAYED, RecordingSink
from codexbridge.recording.schema import REDACTED, HttpMessage, Recording, Redactor, load
from codexbridge.recording.writer import SessionRecorder

SECRET = "sk-spoolsecret123456"
DELTA = b'data: {"type":"response.output_text.delta","delta":"%s"}\n\n'
DONE = b'data: {"type":"response.completed","response":{"id":"r1"}}\n\n'


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    """A sink writing to a spool file of its own, with no worker process (serve() reads the spool in the test)."""
    s = RecordingSink()
    s.start = lambda: None  # type: ignore[method-assign]
    s._spool = tempfile.TemporaryFile()
    s._fd = s._spool.fileno()
    os.lseek(s._fd, SPOOL_START, os.SEEK_SET)
    yield s
    s._close_spool()


def drain(sink: RecordingSink) -> None:
    """The worker's run after the proxy went away: everything in the spool is written, open files are closed."""
    sink.flush()
    lifeline, proxy_end = os.pipe()
    os.close(proxy_end)
    try:
        worker.serve(sink._fd, lifeline)
    finally:
        os.close(lifeline)


def session(sink: RecordingSink, directory: Path, elide_over: int = 0) -> tuple[object, Callable[[], Recording]]:
    request = HttpMessage(method="GET", url="http://127.0.0.1/v1/responses", headers=[("authorization", "Bearer x")])
    rec = sink.session(str(directory), "bridge", "http://127.0.0.1:1", request, [], elide_over, "spool")
    return rec, lambda: load(str(rec.path))


def to_client_frames(recording: Recording) -> list[list[str]]:
    return [e.frames for e in recording.events if e.kind == "to_client"]


def test_every_call_reaches_the_recording_in_order(sink: RecordingSink, tmp_path: Path) -> None:
    rec, read = session(sink, tmp_path)
    rec.client_frame('{"type":"response.create"}')
    rec.client_frame(b"\xff\xfe binary")
    rec.upstream_request("POST", "http://127.0.0.1:1/v1/responses", [("Authorization", "Bearer sk-abcdefgh12")],
                         b'{"input":[]}')
    rec.upstream_response(200, [("content-type", "text/event-stream")])
    rec.upstream_chunk(DELTA % b"a" + DELTA[:20])  # the second event ends in the next read
    rec.relayed_next()
    rec.to_client([b'{"type":"response.output_text.delta","delta":"a"}'])
    rec.upstream_chunk(DELTA[20:] % b"b" + DONE)
    rec.relayed_next()
    rec.to_client([b'{"type":"response.output_text.delta","delta":"b"}', b'{"type":"response.completed"}'])
    rec.to_client([b'{"type":"error"}'], synthetic=True)
    rec.upstream_end()
    rec.ping(b"p1")
    rec.pong(b"p1", 0.002)
    rec.text_keepalive()
    rec.server_frame("passthrough text")
    rec.error("client", "frame too large")
    rec.close(1000, "bye", "client")
    rec.complete()
    drain(sink)
    recording = read()
    kinds = [e.kind for e in recording.events]
    assert kinds == ["client_frame", "client_frame", "upstream_request", "upstream_response", "upstream_chunk",
                     "to_client", "upstream_chunk", "to_client", "to_client", "upstream_end", "ping", "pong",
                     "text_keepalive", "server_frame", "error", "close", "complete"]
    assert to_client_frames(recording)[:2] == [
        ['{"type":"response.output_text.delta","delta":"a"}'],
        ['{"type":"response.output_text.delta","delta":"b"}',
         '{"type":"response.completed","response":{"id":"r1"}}']]  # relayed: filled in from the reads
    assert recording.events[1].b64 and recording.events[0].text == '{"type":"response.create"}'
    assert "sk-abcdefgh12" not in rec.path.read_text()
    assert '"relayed":2' in rec.path.read_text(), "a relayed batch is stored as its count"
    times = [e.t for e in recording.events]
    assert times == sorted(times) and times[0] >= 0


def test_a_record_the_proxy_was_killed_writing_is_left_out(sink: RecordingSink, tmp_path: Path) -> None:
    rec, read = session(sink, tmp_path)
    rec.upstream_response(200, [])
    rec.upstream_chunk(DELTA % b"kept")
    rec.relayed_next()
    rec.to_client([b"x"])  # durable: in the spool now
    sink._pieces.append(RECORD.pack(COUNT.size, 1, TO_CLIENT_RELAYED, 0.0))  # its payload never came
    drain(sink)
    recording = read()
    assert not recording.complete, "no completion line: the proxy died"
    assert to_client_frames(recording) == [['{"type":"response.output_text.delta","delta":"kept"}']]


def test_a_record_larger_than_one_read(sink: RecordingSink, tmp_path: Path) -> None:
    rec, read = session(sink, tmp_path)
    big = b"y" * (worker.READ_SIZE * 2 + 17)
    rec.to_client([big], synthetic=True)
    rec.complete()
    drain(sink)
    assert to_client_frames(read()) == [[big.decode()]]


def test_progress_is_published_for_the_proxy(sink: RecordingSink, tmp_path: Path) -> None:
    rec, _ = session(sink, tmp_path)
    for _ in range(4):
        rec.to_client([b"z" * (worker.PUBLISH_EVERY // 2)], synthetic=True)
    rec.complete()
    drain(sink)
    assert PROGRESS.unpack(os.pread(sink._fd, PROGRESS.size, 0))[0] > SPOOL_START


@pytest.mark.parametrize("elide_over", [0, 12])
def test_redacted_and_elided_reads_are_stored_by_reference(sink: RecordingSink, tmp_path: Path,
                                                           elide_over: int) -> None:
    """A read with a secret (or strings to elide) that starts and ends at an event boundary: the relayed frames are
    its count, and loading gives them redacted and elided exactly as frames written out would be."""
    rec, read = session(sink, tmp_path, elide_over)
    frames = [b'{"type":"response.output_text.delta","delta":"key %s here"}' % SECRET.encode(),
              b'{"type":"response.output_text.delta","delta":"plain"}']
    rec.upstream_response(200, [])
    rec.upstream_chunk(b"".join(b"data: " + f + b"\n\n" for f in frames))
    rec.relayed_next()
    rec.to_client(frames)
    rec.complete()
    drain(sink)
    text = rec.path.read_text()
    assert SECRET not in text and '"relayed":2' in text
    explicit = SessionRecorder(str(tmp_path), "bridge", "u", HttpMessage(headers=[]), Redactor(), elide_over, "x")
    expected = [explicit.text(f.decode()) for f in frames]
    assert to_client_frames(read()) == [expected]
    assert (REDACTED if not elide_over else "<elided ") in expected[0]


def test_a_secret_across_two_reads_turns_to_explicit_frames(sink: RecordingSink, tmp_path: Path) -> None:
    """Reads decoded lazily until one cannot be stored by reference: from then on the frames are written out,
    decoded from every read of the response (the ones before included)."""
    rec, read = session(sink, tmp_path)
    rec.upstream_response(200, [])
    first = DELTA % b"one"
    rec.upstream_chunk(first)
    rec.relayed_next()
    rec.to_client([first[6:-2]])
    split = DELTA % SECRET.encode()
    cut = split.index(b"sk-") + 6
    rec.upstream_chunk(split[:cut])  # no complete event: nothing sent
    rec.upstream_chunk(split[cut:] + DONE)
    rec.relayed_next()
    rec.to_client([split[6:-2], DONE[6:-2]])
    rec.complete()
    drain(sink)
    text = rec.path.read_text()
    assert SECRET not in text
    batches = to_client_frames(read())
    assert batches[0] == ['{"type":"response.output_text.delta","delta":"one"}']
    assert batches[1][0] == '{"type":"response.output_text.delta","delta":"<redacted>"}'
    assert batches[1][1] == DONE[6:-2].decode()
    assert text.count('"relayed"') == 1, "the batch after the split secret is written out"


@pytest.mark.parametrize("token", ["ghpABCDEFGHIJKLMNOP", "ghs_abcdefghijklmnop", "github_pat_11ABCDEFG0123456789"])
def test_a_read_with_a_github_token_is_redacted_and_ordinary_gh_is_not(tmp_path: Path, token: str) -> None:
    rec = SessionRecorder(str(tmp_path), "bridge", "u", HttpMessage(headers=[]), Redactor(), 0, "gh")
    assert rec.text(f"the right token is {token} here") == f"the right token is {REDACTED} here"
    assert rec.text(f"token: {token}") == f"token: {REDACTED}", "without a 'gh' elsewhere in the text too"
    assert rec._clean("a high and mighty thought, right through"), "'gh' alone does not send a read to the regex"
    for trigger in (*(t for t in writer._TRIGGERS if t != "gh"), *writer._GITHUB):  # _clean() spells them out
        assert not rec._clean(f"x {trigger} y"), trigger
