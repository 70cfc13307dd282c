"""Record modes, named and meant as in pytest-recording: what replays, what reaches the live upstream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

RecordMode = Literal["none", "once", "new_episodes", "all"]
RECORD_MODES: tuple[str, ...] = get_args(RecordMode)


@dataclass(frozen=True)
class Plan:
    """What one test does with its recordings."""

    replay: bool  # serve the recorded sessions
    record: bool  # send what the recordings do not answer to the live upstream, and write it down
    missing: bool  # the recordings are not there (a failure when nothing may be recorded)

    @property
    def live_only(self) -> bool:
        """Everything goes to the live upstream through a recording bridge (nothing is replayed)."""
        return self.record and not self.replay


def plan(mode: str, exists: bool) -> Plan:
    """none: replay only, a missing recording fails; once: record when missing, else replay only;
    new_episodes: replay what is recorded and record what is not; all: record everything anew."""
    if mode not in RECORD_MODES:
        raise ValueError(f"unknown record mode {mode!r}: choose one of {', '.join(RECORD_MODES)}")
    if mode == "none":
        return Plan(replay=exists, record=False, missing=not exists)
    if mode == "once":
        return Plan(replay=exists, record=not exists, missing=False)
    if mode == "new_episodes":
        return Plan(replay=exists, record=True, missing=False)
    return Plan(replay=False, record=True, missing=False)
