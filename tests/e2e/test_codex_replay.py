"""A real Codex session recorded through mitmdump, then replayed offline as Codex's only upstream.

The replay is the project's own pytest plugin (`codexbridge` fixture): it serves the fresh recording over the
WebSocket mode and over HTTP + SSE, and fails the test if Codex's requests differ from the recorded ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from codexbridge.recording.schema import load
from codexbridge.testing.cassette import Cassette
from support.codex import Codex, record_codex_echo

pytestmark = pytest.mark.codex


@pytest.mark.parametrize("websockets", [True, False], ids=["replayed-over-websocket", "replayed-over-http"])
def test_recorded_codex_session_runs_offline_from_the_replay(tmp_path: Path, codex: Codex, codexbridge: Cassette,
                                                             websockets: bool) -> None:
    rec_dir = tmp_path / "rec"
    live, quiet = record_codex_echo(tmp_path, codex, rec_dir, websockets=True)  # offline after it: the replay serves
    (recording,) = rec_dir.glob("*.jsonl")
    assert load(str(recording)).complete

    codexbridge.use(recording)
    codex.configure(codexbridge.upstream_url, websockets=websockets, extra=quiet)
    replayed = codex.exec("run echo")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == live.stdout
    assert codexbridge.divergences == []
    served = codexbridge.summary()
    if websockets:
        assert served["turns"] == served["turns_recorded"] == 3, served  # prewarm, turn, tool follow-up
    else:
        assert served["posts"] == served["posts_recorded"] == 2, served
