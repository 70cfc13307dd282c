"""The pytest plugin's rules in memory: record modes, ignored fields, divergence text, scrub hooks, file names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codexbridge.recording.schema import ToClient, UpstreamChunk, UpstreamRequest, chunk_bytes, load, parse_lines
from codexbridge.replay.rules import Normalizer, exchanges, output_frames
from codexbridge.testing.cassette import numbered, session_files, targets
from codexbridge.testing.matching import Divergence, Matcher, report, strip_ignored
from codexbridge.testing.modes import plan
from codexbridge.testing.scrub import RecordedRequest, RecordedResponse, dumps, rechunk, scrub
from support import ROOT

PLAIN = ROOT / "recordings" / "plain-turn.jsonl"


@pytest.mark.parametrize(
    ("mode", "exists", "replay", "record", "missing"),
    [
        ("none", True, True, False, False),
        ("none", False, False, False, True),
        ("once", True, True, False, False),
        ("once", False, False, True, False),
        ("new_episodes", True, True, True, False),
        ("new_episodes", False, False, True, False),
        ("all", True, False, True, False),
        ("all", False, False, True, False),
    ],
)
def test_record_modes_as_in_pytest_recording(mode: str, exists: bool, replay: bool, record: bool, missing: bool) -> None:
    decided = plan(mode, exists)
    assert (decided.replay, decided.record, decided.missing) == (replay, record, missing)


def test_unknown_record_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="new_episodes"):
        plan("rewrite-everything", True)


def test_ignored_fields_by_name_anywhere_and_by_dotted_path() -> None:
    body = {"model": "m", "metadata": {"user": "a", "team": "b"}, "input": [{"id": "1", "text": "x"}, {"id": "2"}],
            "nested": {"user": "deep"}}
    matcher = Matcher(["model", "metadata.user", "input.*.id"])
    assert strip_ignored(body, matcher.anywhere, matcher.anchored) == {
        "metadata": {"team": "b"}, "input": [{"text": "x"}, {}], "nested": {"user": "deep"}}
    assert Matcher(["user"]).canonical(json.dumps(body))["nested"] == {}


def test_matcher_ignores_what_it_is_told_and_nothing_else() -> None:
    normalizer = Normalizer(load(str(PLAIN)))
    recorded = json.dumps({"model": "gpt-5.5", "instructions": "old", "input": "hi"})
    live = RecordedRequest("post", "/v1/responses", [], json.dumps({"model": "gpt-5.5", "instructions": "new", "input": "hi"}))
    found = Matcher().compare("POST #1", "r.jsonl", recorded, live, normalizer)
    assert found is not None and "$.instructions" in found.summary and "'old'" in found.summary and "'new'" in found.summary
    assert Matcher(["instructions"]).compare("POST #1", "r.jsonl", recorded, live, normalizer) is None


def test_divergence_reads_as_expected_versus_came() -> None:
    expected = {"input": [{"role": "user", "content": "run echo"}], "model": "gpt-5.5"}
    came = {"input": [{"role": "user", "content": "run echo twice"}], "model": "gpt-5.5"}
    text = report([Divergence("POST #1 to /v1/responses", "recordings/t.jsonl", expected, came),
                   Divergence("POST #2 of the session", "recordings/t.jsonl", expected, None)])
    assert "First divergence: POST #1 to /v1/responses: $.input[0].content: expected 'run echo', came 'run echo twice'" in text
    assert "--- recorded\n+++ came" in text
    assert '-      "content": "run echo",' in text and '+      "content": "run echo twice",' in text
    assert "POST #2 of the session: recorded but never requested" in text


def test_rechunk_keeps_the_reads_counted_in_events() -> None:
    old = ["data: a\n\nda", "ta: bb\n\n", "data: c\n\n"]
    new = "".join(old).replace("bb", "<scrubbed>")
    pieces = rechunk(old, new)
    assert pieces == ["data: a\n\n", "data: <scrubbed>\n\n", "data: c\n\n"]
    assert "".join(rechunk(old, "data: one event only\n\n")) == "data: one event only\n\n"


def test_scrub_hooks_rewrite_requests_and_answers_and_the_file_stays_a_recording() -> None:
    recording = parse_lines(PLAIN.read_text().splitlines())
    seen: list[str] = []

    def before_request(request: RecordedRequest) -> RecordedRequest:
        seen.append(request.kind)
        request.body = request.body.replace("say hi", "say <name>")
        request.headers = [(n, v) for n, v in request.headers if n.lower() != "user-agent"]
        return request

    def before_response(response: RecordedResponse) -> None:
        response.body = response.body.replace("hi from mock", "hi from <model>")

    scrubbed = parse_lines(dumps(scrub(recording, before_request, before_response)).splitlines())
    assert set(seen) == {"handshake", "frame", "post"}
    text = dumps(scrubbed)
    assert "say hi" not in text and "hi from mock" not in text and "user-agent" not in text.lower()
    assert "say <name>" in text and "hi from <model>" in text
    body = b"".join(chunk_bytes(e) for e in scrubbed.events if isinstance(e, UpstreamChunk)).decode()
    assert "hi from <model>" in body
    assert any("hi from <model>" in f for f in output_frames(scrubbed))
    assert len([e for e in scrubbed.events if isinstance(e, UpstreamChunk)]) == len(
        [e for e in recording.events if isinstance(e, UpstreamChunk)])
    assert all(e.relayed is None for e in scrubbed.events if isinstance(e, ToClient))
    assert [e.request.body for e in exchanges(scrubbed)] == [
        e.body.replace("say hi", "say <name>") for e in recording.events if isinstance(e, UpstreamRequest)]


def test_no_hooks_leave_a_recording_as_it_was() -> None:
    recording = parse_lines(PLAIN.read_text().splitlines())
    assert scrub(recording, None, None) == recording
    assert parse_lines(dumps(recording).splitlines()) == recording


def test_a_test_with_several_sessions_numbers_the_files_after_the_last_name(tmp_path: Path) -> None:
    first = tmp_path / "t.jsonl"
    assert numbered(first, 2).name == "t.2.jsonl"
    assert targets([first], 0, 3) == [first, tmp_path / "t.2.jsonl", tmp_path / "t.3.jsonl"]
    assert targets([first, tmp_path / "u.jsonl"], 1, 2) == [tmp_path / "u.jsonl", tmp_path / "u.2.jsonl"]
    for name in ("t.jsonl", "t.10.jsonl", "t.2.jsonl", "t.x.jsonl", "t.1.jsonl"):
        (tmp_path / name).write_text("")
    assert [p.name for p in session_files([first])] == ["t.jsonl", "t.2.jsonl", "t.10.jsonl"]


def test_loading_the_plugin_imports_no_server_or_schema() -> None:
    """pytest loads the plugin in every run of a project that has codexbridge installed: it must cost nothing."""
    import subprocess
    import sys

    code = ("import sys, codexbridge.testing.plugin; "
            "print(sorted(m for m in sys.modules if m.startswith(('codexbridge.testing.', 'codexbridge.replay', "
            "'codexbridge.recording', 'pydantic', 'httpx', 'h11'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "['codexbridge.testing.modes', 'codexbridge.testing.plugin']"
