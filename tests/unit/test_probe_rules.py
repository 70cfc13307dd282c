"""`codexbridge probe`'s judgement of what it measured: stream timing, the ping interval, a stripped upgrade."""

from __future__ import annotations

from codexbridge.tools.probe import Upgrade, judge_upgrade, ping_interval_for, timing


def test_timing_verdicts() -> None:
    assert timing([1000, 1001, 1002, 1003])["verdict"] == "buffered"
    assert timing([100, 400, 700, 1000])["verdict"] == "streamed"
    assert timing([1, 2, 3])["verdict"] == "inconclusive"  # too fast to tell
    assert timing([400, 401, 402], latency_ms=200)["verdict"] == "inconclusive"  # one slow round trip
    assert timing([5, 6])["verdict"] == "inconclusive"


def test_ping_interval_is_half_the_idle_timeout_at_most_20() -> None:
    assert [ping_interval_for(s) for s in (2.0, 60.0, 100.0, 0.5)] == [1, 20, 20, 1]
    assert ping_interval_for(30.0) == 15


def test_101_without_upgrade_headers_is_stripped() -> None:
    u = Upgrade(status=101, reason="Switching Protocols", headers=[("Sec-WebSocket-Accept", "x")])
    (f,) = judge_upgrade(u, "http://h/v1", "http://h")
    assert f.id == "upgrade_stripped"
    (f,) = judge_upgrade(Upgrade(status=200, reason="OK"), "http://h/v1", "http://h")
    assert f.id == "upgrade_stripped"
