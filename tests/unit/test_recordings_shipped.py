"""The recordings folder ships one recording of every scenario the replay tests run."""

from __future__ import annotations

from support import ROOT

RECORDINGS = sorted((ROOT / "recordings").glob("*.jsonl"))


def test_recordings_are_shipped() -> None:
    names = {p.name.rsplit("-", 1)[0] if p.stem[-1].isdigit() and "-" in p.stem else p.stem for p in RECORDINGS}
    for scenario in ("plain-turn", "tool-call-chain", "multi-turn-thread", "upstream-error", "idle-keepalive"):
        assert any(n.startswith(scenario) for n in names), f"recordings/{scenario}*.jsonl is missing"
