"""The keepalive schedule, in memory: when pings, pong timeouts and text keepalives fall due."""

from __future__ import annotations

from codexbridge.responses.keepalive import Action, KeepalivePolicy, KeepaliveState


def state(interval: float = 20, timeout: float = 5, text: float = 0) -> KeepaliveState:
    return KeepaliveState(KeepalivePolicy(interval, timeout, text))


def test_no_ping_before_the_first_business_frame() -> None:
    s = state()
    assert s.next_wakeup() is None
    assert s.due(1000) == []
    s.wrote(0, text=False)  # a control frame does not start the schedule
    assert s.due(1000) == []


def test_ping_after_idle_interval_and_pong_clears_it() -> None:
    s = state()
    s.wrote(100)
    assert s.next_wakeup() == 120
    assert s.due(119.9) == []
    assert s.due(120) == [Action.PING]
    assert s.ping_payload == b"codexbridge-1"
    assert s.next_wakeup() == 125  # the pong deadline
    assert s.pong(b"someone-elses", 121) is None
    assert s.pong(b"codexbridge-1", 121) == 1
    assert s.next_wakeup() == 140  # the ping counted as a write
    assert s.due(140) == [Action.PING] and s.ping_payload == b"codexbridge-2"


def test_writes_postpone_the_ping() -> None:
    s = state()
    s.wrote(0)
    s.wrote(15)
    assert s.due(20) == []
    assert s.next_wakeup() == 35


def test_missing_pong_times_out_once() -> None:
    s = state()
    s.wrote(0)
    assert s.due(20) == [Action.PING]
    assert s.due(24.9) == []
    assert s.due(25) == [Action.PONG_TIMEOUT]
    assert s.due(100) == [] and s.next_wakeup() is None


def test_zero_interval_disables_pings() -> None:
    s = state(interval=0)
    s.wrote(0)
    assert s.due(10_000) == [] and s.next_wakeup() is None


def test_text_keepalive_only_while_in_flight_and_pings_do_not_postpone_it() -> None:
    s = state(interval=4, timeout=1, text=10)
    s.wrote(0)
    assert s.due(3) == []
    s.response_started(3)
    assert s.due(7) == [Action.PING]
    s.pong(s.ping_payload, 7.1)
    assert s.due(11) == [Action.PING]
    s.pong(s.ping_payload, 11.1)
    assert s.due(13) == [Action.TEXT]
    s.wrote(14)  # an upstream event
    assert s.next_wakeup() == 18  # next ping; the text keepalive waits until 24
    s.response_ended()
    assert Action.TEXT not in s.due(30)


def test_text_keepalive_alone() -> None:
    s = state(interval=0, text=5)
    assert s.next_wakeup() is None
    s.response_started(0)
    assert s.next_wakeup() == 5
    assert s.due(5) == [Action.TEXT]
    assert s.next_wakeup() == 10
