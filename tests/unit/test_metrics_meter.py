"""The metrics addon's per-flow meter: how a bridged response's end becomes an outcome."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from codexbridge.addons.metrics import Counts, FlowMeter


def ended(terminal: str | None, client_gone: bool) -> dict[str, int]:
    counts = Counts()
    run = SimpleNamespace(upstream_status=200, error_frame=None, tracker=SimpleNamespace(terminal=terminal),
                          started=0.0, first_event_at=None)
    FlowMeter(counts, bridged=True).response_ended(run, client_gone)  # type: ignore[arg-type]  # the fields it reads
    assert counts.duration.n == 1
    return counts.responses


@pytest.mark.parametrize(("terminal", "outcome"), [("response.completed", "completed"),
                                                   ("response.failed", "failed"), ("error", "error")])
def test_a_response_whose_terminal_event_reached_the_client_counts_by_it(terminal: str, outcome: str) -> None:
    assert ended(terminal, client_gone=False) == {outcome: 1}


def test_a_response_the_client_left_before_its_terminal_event_counts_as_client_gone() -> None:
    assert ended(None, client_gone=True) == {"client_gone": 1}
    assert ended("response.completed", client_gone=True) == {"client_gone": 1}  # drained to its end afterwards
    assert ended(None, client_gone=False) == {"error": 1}
