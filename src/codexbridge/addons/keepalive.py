"""The keepalive addon: downstream Pings with a pong deadline, and text keepalives, for Codex WebSocket sessions."""

from __future__ import annotations

from mitmproxy import ctx, exceptions, http

from codexbridge import mitm
from codexbridge.addons.common import (
    KEEPALIVE,
    CodexAddon,
    add_message_hook_option,
    add_on_disconnect_option,
    registry,
    websocket_starting,
)
from codexbridge.responses.keepalive import KeepalivePolicy


class Keepalive(CodexAddon):
    """Keeps each Codex WebSocket session alive toward its client: relayed by mitmproxy, or bridged when the
    bridge is loaded too. Nothing else: no bridging, no recording."""

    concern = KEEPALIVE

    def __init__(self) -> None:
        super().__init__()
        self._policy: KeepalivePolicy | None = None

    def load(self, loader) -> None:
        loader.add_option(
            "codexbridge_ping_interval", int, 20,
            "Seconds without any write to a WebSocket client after which the proxy sends it a Ping, "
            "starting after the first frame sent to it; 0 disables pings. Keeps idle-sensitive proxies "
            "(nginx proxy_read_timeout, CDNs) from closing a long silent turn.",
        )
        loader.add_option(
            "codexbridge_ping_timeout", int, 5,
            "Seconds to wait for the Pong answering our Ping; without it the client is closed with 1011 "
            "and the upstream is handled per codexbridge_on_disconnect. Must be below codexbridge_ping_interval.",
        )
        loader.add_option(
            "codexbridge_text_keepalive", int, 0,
            "Seconds of upstream silence during a response after which the proxy sends the client the text "
            "frame {\"type\":\"keepalive\"}, which Codex ignores but counts as activity for its own idle "
            "timeout (a Ping does not reset that timer); 0 disables it.",
        )
        add_on_disconnect_option(loader)
        add_message_hook_option(loader)
        super().load(loader)

    def configure(self, updated: set[str]) -> None:
        super().configure(updated)
        self._policy = None
        opts = ctx.options
        if {"codexbridge_ping_interval", "codexbridge_ping_timeout"} & updated:
            interval, timeout = opts.codexbridge_ping_interval, opts.codexbridge_ping_timeout
            if interval < 0 or timeout < 1:
                raise exceptions.OptionsError("codexbridge_ping_interval must be >= 0 and codexbridge_ping_timeout >= 1.")
            if interval and timeout >= interval:
                raise exceptions.OptionsError(
                    f"codexbridge_ping_timeout ({timeout}) must be below codexbridge_ping_interval ({interval})."
                )
        if "codexbridge_text_keepalive" in updated and opts.codexbridge_text_keepalive < 0:
            raise exceptions.OptionsError("codexbridge_text_keepalive must be 0 (off) or positive.")

    def policy(self) -> KeepalivePolicy:
        """The policy of the options now, made once per option change (frozen: the flows share it)."""
        if self._policy is None:
            opts = ctx.options
            self._policy = KeepalivePolicy(
                float(opts.codexbridge_ping_interval), float(opts.codexbridge_ping_timeout),
                float(opts.codexbridge_text_keepalive),
            )
        return self._policy

    def response(self, flow: http.HTTPFlow) -> None:
        if self.active and websocket_starting(flow) and not registry.bridge_off():
            self.plan_websocket(flow)

    def plan_websocket(self, flow: http.HTTPFlow) -> None:
        plan = mitm.plan_of(flow)
        if plan.keepalive is not None:
            return
        plan.keepalive = self.policy()
        plan.drain = ctx.options.codexbridge_on_disconnect == "drain"  # relayed: after a pong timeout
        plan.message_hook = ctx.options.codexbridge_message_hook

    def done(self) -> None:
        self.unload()
