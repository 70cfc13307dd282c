"""Downstream keepalive schedule: idle pings with a pong deadline, and text keepalives (sans-IO)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class KeepalivePolicy:
    ping_interval: float = 20.0  # 0 disables pings
    ping_timeout: float = 5.0
    text_interval: float = 0.0  # 0 disables text keepalives

    @property
    def enabled(self) -> bool:
        return self.ping_interval > 0 or self.text_interval > 0


class Action(Enum):
    PING = "ping"
    PONG_TIMEOUT = "pong_timeout"
    TEXT = "text_keepalive"


# The frame Codex ignores but counts as activity for its own idle timer (see README).
TEXT_KEEPALIVE_FRAME = b'{"type":"keepalive"}'


class KeepaliveState:
    """When to ping an idle client, when a missing pong ends it, when to send a text keepalive.

    Pings start only after the first business frame to the client; any write to the client
    counts as activity. Text keepalives are sent only while a response is in flight and the
    upstream has been silent for `text_interval`.
    """

    __slots__ = ("policy", "started", "last_write", "last_text", "ping_sent_at", "ping_payload", "pings",
                 "in_flight", "closed")

    def __init__(self, policy: KeepalivePolicy) -> None:
        self.policy = policy
        self.started = False
        self.last_write = 0.0
        self.ping_sent_at: float | None = None
        self.ping_payload = b""
        self.pings = 0
        self.in_flight = False
        self.last_text = 0.0
        self.closed = False

    def wrote(self, now: float, text: bool = True) -> None:
        """Something was written to the client; a text frame also starts the ping schedule.

        Only text frames reset Codex's own idle timer, so only they postpone a text keepalive.
        """
        self.last_write = now
        if text:
            self.last_text = now
            self.started = True

    def response_started(self, now: float) -> None:
        self.in_flight = True
        self.last_text = max(self.last_text, now)

    def response_ended(self) -> None:
        self.in_flight = False

    def pong(self, payload: bytes, now: float) -> float | None:
        """Returns the round trip time if the pong answers our outstanding ping, else None."""
        if self.ping_sent_at is None or payload != self.ping_payload:
            return None
        rtt = now - self.ping_sent_at
        self.ping_sent_at = None
        return rtt

    def owns(self, payload: bytes) -> bool:
        return payload.startswith(b"codexbridge-")

    def due(self, now: float) -> list[Action]:
        """The actions due at `now`; a PING action has set `ping_payload` for the caller."""
        if self.closed:
            return []
        actions: list[Action] = []
        p = self.policy
        if self.ping_sent_at is not None:
            if now - self.ping_sent_at >= p.ping_timeout:
                self.closed = True
                return [Action.PONG_TIMEOUT]
        elif p.ping_interval > 0 and self.started and now - self.last_write >= p.ping_interval:
            self.pings += 1
            self.ping_payload = b"codexbridge-%d" % self.pings
            self.ping_sent_at = now
            self.last_write = now
            actions.append(Action.PING)
        if p.text_interval > 0 and self.in_flight and now - self.last_text >= p.text_interval:
            self.wrote(now)
            actions.append(Action.TEXT)
        return actions

    def next_wakeup(self) -> float | None:
        """The earliest time at which `due` may return something, or None when nothing is pending."""
        if self.closed:
            return None
        p = self.policy
        times: list[float] = []
        if self.ping_sent_at is not None:
            times.append(self.ping_sent_at + p.ping_timeout)
        elif p.ping_interval > 0 and self.started:
            times.append(self.last_write + p.ping_interval)
        if p.text_interval > 0 and self.in_flight:
            times.append(self.last_text + p.text_interval)
        return min(times) if times else None
