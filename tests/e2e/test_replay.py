"""Every shipped recording replays through a real mitmdump bridge byte for byte; a changed byte fails."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from codexbridge.recording.schema import load
from codexbridge.replay.client import ClientReplayResult, replay_client, replay_http_client
from support import BIN, ROOT
from support.mitmdump import start_mitmdump
from support.upstream import start_replay_server

RECORDINGS = sorted((ROOT / "recordings").glob("*.jsonl"))


def replay_through_bridge(tmp: Path, path: Path) -> tuple[ClientReplayResult, dict]:
    recording = load(str(path))
    server = start_replay_server(tmp, path)
    proxy = start_mitmdump(tmp, f"http://127.0.0.1:{server.port}")
    try:
        if recording.header.mode == "http":
            result = asyncio.run(replay_http_client(recording, f"http://127.0.0.1:{proxy.port}"))
        else:
            result = asyncio.run(replay_client(recording, proxy.ws_url))
        return result, server.report()
    finally:
        proxy.stop()
        server.stop()


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_recording_replays_exactly(tmp_path: Path, path: Path) -> None:
    result, served = replay_through_bridge(tmp_path, path)
    assert result.ok, result.explain()
    assert result.expected > 0
    assert served["divergences"] == [], served
    assert served["posts_served"] == served["posts_total"], served


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
def test_one_changed_byte_fails_the_replay(tmp_path: Path, kind: str) -> None:
    source = ROOT / "recordings" / "plain-turn.jsonl"
    mutated = tmp_path / "mutated.jsonl"
    mutate(source, mutated, kind)
    result, _ = replay_through_bridge(tmp_path, mutated)
    assert not result.ok
    assert len(result.mismatches) == 1
    assert "mocK" in ((result.mismatches[0].expected or "") + (result.mismatches[0].actual or ""))


def test_replay_cli_against_a_bridge(tmp_path: Path) -> None:
    source = ROOT / "recordings" / "plain-turn.jsonl"
    mutated = tmp_path / "mutated.jsonl"
    mutate(source, mutated, "to_client")
    for path, code, words in ((source, 0, "replay matched"), (mutated, 1, "replay diverged")):
        server = start_replay_server(tmp_path, source)
        proxy = start_mitmdump(tmp_path, f"http://127.0.0.1:{server.port}")
        try:
            run = subprocess.run([str(BIN / "codexbridge"), "replay", str(path), "--against", proxy.ws_url],
                                 capture_output=True, text=True, timeout=60)
        finally:
            proxy.stop()
            server.stop()
        assert run.returncode == code and words in run.stderr, run.stderr
        if code:
            assert "mocK" in run.stderr
