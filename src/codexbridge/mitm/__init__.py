"""The only package that touches mitmproxy internals; importing it checks them and refuses to load when they differ."""

from codexbridge.mitm.compat import IncompatibleMitmproxy, check_internals

check_internals()

from codexbridge.mitm import overhead  # noqa: E402
from codexbridge.mitm.fastpath import take_upgrades  # noqa: E402
from codexbridge.mitm.layer import CodexWebsocketLayer, install, uninstall  # noqa: E402 - only once the internals are known to be there
from codexbridge.mitm.messages import switching_protocols  # noqa: E402
from codexbridge.mitm.outbox import ClientOutbox  # noqa: E402
from codexbridge.mitm.plans import (  # noqa: E402
    BridgeHooks,
    FlowMeter,
    FlowPlan,
    detach_server,
    forget_flow,
    plan_flow,
    plan_of,
    set_flow_messages,
)

__all__ = [
    "BridgeHooks", "ClientOutbox", "CodexWebsocketLayer", "FlowMeter", "FlowPlan", "IncompatibleMitmproxy", "check_internals",
    "detach_server", "forget_flow", "install", "overhead", "plan_flow", "plan_of", "set_flow_messages", "switching_protocols", "take_upgrades",
    "uninstall",
]
