"""Runs a flow's keepalive schedule (sans-IO rules in responses.keepalive) on the event loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import wsproto.events as wse

from codexbridge.mitm.outbox import ClientOutbox
from codexbridge.responses.keepalive import TEXT_KEEPALIVE_FRAME, Action, KeepalivePolicy, KeepaliveState

log = logging.getLogger("codexbridge.mitm")


class KeepaliveDriver:
    """Runs one flow's keepalive schedule on the event loop: a timer, told of every write by the flow's outbox,
    and pings, text keepalives and closes sent through it."""

    def __init__(self, outbox: ClientOutbox, policy: KeepalivePolicy, peer: Any) -> None:
        self.outbox = outbox
        self.peer = peer  # for the log
        self.state = KeepaliveState(policy)
        self.loop = asyncio.get_running_loop()
        outbox.keepalive = self
        self.counters = (0, 0)  # frames, bytes written to the client
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None

    def wrote(self, text: bool, nbytes: int, frames: int = 1) -> None:
        self.state.wrote(self.loop.time(), text)
        if text:
            self.counters = (self.counters[0] + frames, self.counters[1] + nbytes)
        if self._timer is None:
            self._arm()

    def response_started(self) -> None:
        self.state.response_started(self.loop.time())
        self._arm()

    def response_ended(self) -> None:
        self.state.response_ended()

    def pong(self, payload: bytes) -> bool:
        """Consumes a pong if it answers our ping (then it must not be relayed)."""
        if not self.state.owns(payload):
            return False
        rtt = self.state.pong(payload, self.loop.time())
        if self.outbox.recorder is not None:
            self.outbox.recorder.pong(payload, rtt)
        if rtt is not None:
            if self.outbox.meter is not None:
                self.outbox.meter.pong(rtt)
            log.debug("stage=downstream_ping_ok client=%s rtt_ms=%.1f", self.peer, rtt * 1000)
        return True

    def stop(self) -> None:
        self.state.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        when = self.state.next_wakeup()
        if when is None:
            return
        if self._timer is not None:
            if self._armed_at is not None and self._armed_at <= when:
                return
            self._timer.cancel()
        self._armed_at = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        outbox = self.outbox
        for action in self.state.due(self.loop.time()):
            if action is Action.PING:
                outbox.idle()
                outbox.send(control=wse.Ping(self.state.ping_payload))
            elif action is Action.TEXT:
                log.debug("stage=text_keepalive client=%s", self.peer)
                outbox.send([TEXT_KEEPALIVE_FRAME], True, keepalive=True)
            elif action is Action.PONG_TIMEOUT:
                log.info("stage=downstream_ping_timeout client=%s timeout=%ss", self.peer, self.state.policy.ping_timeout)
                if outbox.meter is not None:
                    outbox.meter.pong_timeout()
                outbox.send(control=wse.CloseConnection(1011, "pong timeout"))
        self._arm()
