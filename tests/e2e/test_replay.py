"""Every shipped recording replays through a real mitmdump bridge byte for byte; a changed byte fails.

The recorded upstream is served by the project's own pytest plugin (the `codexbridge` marker and fixtures), which
also fails a test whose bridge sends the upstream a request that differs from the recorded one."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from codexbridge.recording.schema import load
from codexbridge.replay.client import ClientReplayResult, replay_client, replay_http_client
from codexbridge.replay.rules import exchanges
from codexbridge.testing.cassette import Cassette
from support import BIN, ROOT

RECORDINGS = sorted((ROOT / "recordings").glob("*.jsonl"))
PLAIN = ROOT / "recordings" / "plain-turn.jsonl"


def replay_through_bridge(codexbridge: Cassette, path: Path) -> ClientReplayResult:
    """Plays the recording's client side against a real bridge whose upstream is the recording's upstream side."""
    recording = load(str(path))
    bridge = codexbridge.bridge_url
    if recording.header.mode == "http":
        return asyncio.run(replay_http_client(recording, bridge.removesuffix("/v1")))
    return asyncio.run(replay_client(recording, bridge.replace("http://", "ws://", 1) + "/responses"))


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=pytest.mark.codexbridge(str(p))) for p in RECORDINGS])
def test_recording_replays_exactly(codexbridge: Cassette, path: Path) -> None:
    result = replay_through_bridge(codexbridge, path)
    assert result.ok, result.explain()
    assert result.expected > 0
    assert codexbridge.divergences == []
    served = codexbridge.summary()
    assert served["posts"] == served["posts_recorded"] == len(exchanges(load(str(path)))), served


def mutate(src: Path, dst: Path, kind: str) -> None:
    lines = src.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines[1:], 1):
        event = json.loads(line)
        if event["kind"] == kind and "hi from mock" in line:
            lines[i] = line.replace("hi from mock", "hi from mocK", 1)
            dst.write_text("".join(lines))
            return
    raise AssertionError(f"no {kind} event with the text to mutate in {src.name}")


@pytest.mark.parametrize("kind", ["to_client", "upstream_chunk"])
def test_one_changed_byte_fails_the_replay(tmp_path: Path, codexbridge: Cassette, kind: str) -> None:
    mutated = tmp_path / "mutated.jsonl"
    mutate(PLAIN, mutated, kind)
    codexbridge.use(mutated)
    result = replay_through_bridge(codexbridge, mutated)
    assert not result.ok
    assert len(result.mismatches) == 1
    assert "mocK" in ((result.mismatches[0].expected or "") + (result.mismatches[0].actual or ""))


@pytest.mark.codexbridge(str(PLAIN))
@pytest.mark.parametrize("changed", [False, True], ids=["same", "one-byte-changed"])
def test_replay_cli_against_a_bridge(tmp_path: Path, codexbridge_bridge: str, changed: bool) -> None:
    path = PLAIN
    if changed:
        path = tmp_path / "mutated.jsonl"
        mutate(PLAIN, path, "to_client")
    ws_url = codexbridge_bridge.replace("http://", "ws://", 1) + "/responses"
    run = subprocess.run([str(BIN / "codexbridge"), "replay", str(path), "--against", ws_url],
                         capture_output=True, text=True, timeout=60)
    code, words = (1, "replay diverged") if changed else (0, "replay matched")
    assert run.returncode == code and words in run.stderr, run.stderr
    if changed:
        assert "mocK" in run.stderr
