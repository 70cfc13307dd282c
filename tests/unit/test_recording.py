"""Redaction and elision rules, in memory."""

from __future__ import annotations

import json

import pytest

from codexbridge.recording.schema import REDACTED, Redactor, elide_text, parse_lines


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnop",
        "Bearer abc.def-ghi_jkl",
        "bearer 0123456789abcdef",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "ghp_abcdefghijklmnopqrstuvwx",
        "AKIAABCDEFGHIJKLMNOP",
    ],
)
def test_token_patterns_are_redacted(secret: str) -> None:
    text = f'{{"input":"my secret is {secret} ok"}}'
    out = Redactor().text(text)
    assert secret not in out and REDACTED in out
    json.loads(out)  # still valid JSON
    assert Redactor().text(out) == out


def test_secret_headers_by_name_and_extra_patterns() -> None:
    r = Redactor([r"internal-\d{4}"])
    headers = r.headers([("Authorization", "x"), ("Cookie", "a=b"), ("X-Api-Key", "k"), ("api-key", "k"),
                         ("OpenAI-Organization", "org-1"), ("X-Trace", "internal-1234")])
    assert dict(headers) == {"Authorization": REDACTED, "Cookie": REDACTED, "X-Api-Key": REDACTED,
                             "api-key": REDACTED, "OpenAI-Organization": "org-1", "X-Trace": REDACTED}


def test_plain_text_is_left_alone() -> None:
    text = '{"type":"response.output_text.delta","delta":"ask- the desk-top skeptic"}'
    assert Redactor().text(text) == text


def test_elision_is_idempotent_and_keeps_json_valid() -> None:
    long = "x" * 100
    text = json.dumps({"a": long, "b": "short", "c": [long + "y"], "d": 'quote " inside ' * 10})
    once = elide_text(text, 40)
    assert long not in once and '"short"' in once
    assert elide_text(once, 40) == once
    assert elide_text(once, 10) == once.replace('"short"', '"short"')
    parsed = json.loads(once)
    assert parsed["a"].startswith("<elided 100 chars sha256:")
    assert parsed["a"] != parsed["c"][0]


def test_a_torn_last_line_is_ignored_but_a_torn_middle_is_not() -> None:
    header = json.dumps({"tool_version": "0", "mode": "bridge", "upstream": "u", "started_at": "t",
                         "request": {"headers": []}})
    event = json.dumps({"kind": "ping", "t": 1.0, "payload": "p"})
    rec = parse_lines([header, event, '{"kind": "pi'])
    assert len(rec.events) == 1 and not rec.complete
    with pytest.raises(ValueError):
        parse_lines([header, '{"kind": "pi', event])


def test_elision_does_not_take_the_text_between_two_strings_for_a_string() -> None:
    # one network read with two SSE events: the gap between two JSON documents is not a string literal
    chunk = ('data: {"type":"response.created","response":{"output":[]}}\n\n'
             'event: response.in_progress\ndata: {"type":"response.in_progress","x":"' + "y" * 60 + '"}\n\n')
    out = elide_text(chunk, 40)
    assert out.startswith('data: {"type":"response.created","response":{"output":[]}}\n\nevent: response.in_progress\n')
    assert '"x":"<elided 60 chars sha256:' in out


def test_relayed_batches_written_as_a_count_are_filled_in_from_the_reads() -> None:
    header = ('{"format":"codexbridge-recording","version":1,"tool_version":"0","mode":"bridge","upstream":"u",'
              '"started_at":"2026-01-01T00:00:00+00:00","request":{"method":"GET","url":"u","headers":[]}}')
    lines = [header,
             '{"kind":"upstream_response","t":0.1,"status":200,"headers":[]}',
             '{"kind":"upstream_chunk","t":0.2,"text":"data: {\\"type\\":\\"a\\"}\\n\\nevent: x\\ndata: {\\"type\\":\\"b\\""}',
             '{"kind":"to_client","t":0.2,"relayed":1,"synthetic":false}',
             '{"kind":"upstream_chunk","t":0.3,"text":"}\\n\\n"}',
             '{"kind":"to_client","t":0.3,"frames":["{\\"type\\":\\"error\\"}"],"synthetic":true}',
             '{"kind":"to_client","t":0.3,"relayed":1,"synthetic":false}']
    events = parse_lines(lines).events
    assert [e.frames for e in events if e.kind == "to_client"] == [
        ['{"type":"a"}'], ['{"type":"error"}'], ['{"type":"b"}']]
    with pytest.raises(ValueError, match="relayed batch of 2 frames"):
        parse_lines([*lines[:3], '{"kind":"to_client","t":0.2,"relayed":2,"synthetic":false}'])
