"""A real Codex session recorded through mitmdump, then replayed offline as Codex's only upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from codexbridge.recording.schema import load
from support import ROOT
from support.codex import Codex, quiet_codex_config
from support.mitmdump import start_mitmdump
from support.upstream import start_replay_server, start_upstream

pytestmark = pytest.mark.codex


@pytest.mark.parametrize("websockets", [True, False], ids=["replayed-over-websocket", "replayed-over-http"])
def test_recorded_codex_session_runs_offline_from_the_replay(tmp_path: Path, codex: Codex, websockets: bool) -> None:
    rec_dir = tmp_path / "rec"
    upstream = start_upstream(tmp_path)
    proxy = start_mitmdump(tmp_path, upstream.url, f"codexbridge_record={rec_dir}", "codexbridge_record_elide=40")
    quiet = quiet_codex_config(ROOT / "recordings" / "instructions.md")
    try:
        codex.configure(proxy.base_url, websockets=True, extra=quiet)
        live = codex.exec("run echo")
    finally:
        proxy.stop()
    assert live.returncode == 0 and "tool said: hello-from-tool" in live.stdout, live.stderr
    (recording,) = rec_dir.glob("*.jsonl")
    assert load(str(recording)).complete

    upstream.stop()  # offline from here on: the replay is the only upstream
    server = start_replay_server(tmp_path, recording)
    try:
        codex.configure(f"{server.url}/v1", websockets=websockets, extra=quiet)
        replayed = codex.exec("run echo")
        report = server.report()
    finally:
        server.stop()
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == live.stdout
    assert report["divergences"] == [], report
    if websockets:
        assert report["turns_served"] == report["turns_total"] == 3  # prewarm, turn, tool follow-up
    else:
        assert report["posts_served"] == report["posts_total"] == 2
