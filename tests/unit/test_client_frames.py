"""Parsing client frames (in memory): what is not JSON, nests too deep or is not Unicode becomes ClientFrameError."""

from __future__ import annotations

import json

import pytest

from codexbridge.responses.conversation import MAX_JSON_DEPTH, ClientFrameError, parse_client_frame


def nested(depth: int) -> str:
    return '{"type":"response.create","input":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{nope", "not valid JSON"),
        (nested(MAX_JSON_DEPTH + 1), f"deeper than {MAX_JSON_DEPTH}"),
        ("[" * 100_000 + "]" * 100_000, f"deeper than {MAX_JSON_DEPTH}"),  # RecursionError inside json.loads
        ('{"a":' * 5_000 + "1" + "}" * 5_000, f"deeper than {MAX_JSON_DEPTH}"),
        ('{"input":"\\ud800"}', "lone UTF-16 surrogate"),
        ('{"input":"x\\uDFFFy"}', "lone UTF-16 surrogate"),
        ('{"\\udbff":1}', "lone UTF-16 surrogate"),
        ('{"input":"\\ude00\\ud83d"}', "lone UTF-16 surrogate"),  # a pair in the wrong order
        (b'{"input":"\xff"}', "not valid JSON"),
    ],
)
def test_frames_that_cannot_be_served_are_client_errors(text: str | bytes, why: str) -> None:
    with pytest.raises(ClientFrameError) as raised:
        parse_client_frame(text)
    assert raised.value.status == 400 and raised.value.code == "invalid_json"
    assert why in raised.value.message


@pytest.mark.parametrize(
    "text",
    [
        nested(MAX_JSON_DEPTH),
        '{"input":"\\ud83d\\ude00"}',  # a surrogate pair: one emoji
        '{"input":"\\\\ud800"}',  # an escaped backslash, then the letters: no surrogate at all
        json.dumps({"input": ["x"] * (MAX_JSON_DEPTH * 4)}),  # many brackets, shallow
        b'{"type":"response.create","model":"m"}',
    ],
)
def test_deep_enough_and_unicode_frames_parse(text: str | bytes) -> None:
    assert parse_client_frame(text) == json.loads(text)
