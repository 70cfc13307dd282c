"""Every line the recording writer forms validates against the recording schema, and it writes every kind of event."""

from __future__ import annotations

import json
import random
import typing
from array import array
from pathlib import Path

from codexbridge.recording import schema
from codexbridge.recording.schema import EVENT_ADAPTER, Header, HttpMessage, Redactor
from codexbridge.recording.writer import SessionRecorder


def schema_kinds() -> set[str]:
    union = typing.get_args(schema.Event)[0]
    return {model.model_fields["kind"].default for model in typing.get_args(union)}


def write_every_event(directory: Path, redactor: Redactor, elide_over: int = 0) -> Path:
    request = HttpMessage(method="GET", url="http://127.0.0.1/v1/responses",
                          headers=[("authorization", "Bearer sk-secret-123456"), ("x-codex-turn-state", "abc")])
    rec = SessionRecorder(str(directory), "bridge", "http://127.0.0.1:1", request, redactor, elide_over, "every")
    rec.client_frame('{"type":"response.create","input":"sk-abcdefgh1234"}')
    rec.client_frame(b"\xff\xfe binary")
    rec.upstream_request("POST", "http://127.0.0.1:1/v1/responses", [("authorization", "Bearer x")], b'{"input":[]}')
    rec.upstream_response(200, [("content-type", "text/event-stream")])
    events = b'data: {"type":"response.created"}\n\ndata: {"type":"response.completed"}\n\n'
    rec.upstream_chunk(events)
    rec.to_client_relayed()
    rec.upstream_chunk(b"\xff not utf-8")
    rec.to_client([b'{"type":"response.output_text.delta","delta":"sk-leaked12345"}'])
    frames = [b'{"type":"error"}', b'{"type":"x"}']
    rec.to_client_packed(b"".join(frames), array("I", map(len, frames)).tobytes(), synthetic=True)
    rec.upstream_end("reset by peer")
    rec.upstream_end()
    rec.server_frame('{"type":"response.completed"}')
    rec.server_frame(b"\x00\x01")
    rec.ping(b"cb-1")
    rec.pong(b"cb-1", 0.0123)
    rec.pong(b"other", None)
    rec.text_keepalive()
    rec.error("client", "frame too large")
    rec.close(1000, "bye", "client")
    rec.complete()
    return rec.path


def test_every_line_validates_against_the_schema(tmp_path: Path) -> None:
    for redactor, elide in ((Redactor(), 0), (Redactor([r"abc"]), 0), (Redactor(), 8)):
        directory = tmp_path / f"{len(redactor.extra)}-{elide}"
        directory.mkdir()
        path = write_every_event(directory, redactor, elide)
        lines = path.read_text().splitlines()
        assert lines[0] == Header.model_validate_json(lines[0]).model_dump_json(), "the header as pydantic writes it"
        kinds = {EVENT_ADAPTER.validate_json(line).kind for line in lines[1:]}
        assert kinds == schema_kinds(), f"written {sorted(kinds)}, schema {sorted(schema_kinds())}"
        recording = schema.load(str(path))
        assert recording.events[-1].kind == "complete"


def test_the_writer_has_a_method_for_each_kind_of_event() -> None:
    methods = {name for name in vars(SessionRecorder) if not name.startswith("_")}
    for kind in schema_kinds():
        assert kind in methods, kind


def test_event_times_are_written_as_json_writes_them(tmp_path: Path) -> None:
    """The hot lines format t themselves (no float repr): the same text as json.dumps of the rounded float."""
    rec = SessionRecorder(str(tmp_path), "bridge", "u", HttpMessage(headers=[]), Redactor(), 0, "t")
    rng = random.Random(15)
    samples = [0.0, 1e-7, 5e-5, 0.0001, 0.1234565, 0.9999995, 2.5, 1234.0000004, 86400.5, 1e9, 3e10]
    samples += [rng.random() * 10 ** rng.uniform(-6, 10) for _ in range(20000)]
    rec.clock0 = 1000.0
    for t in samples:
        rec.clock = 1000.0 + t
        assert rec._t_json() == json.dumps(rec._t()), t
    rec.discard()
