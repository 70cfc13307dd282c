"""mitmdump -s entry script: only the downstream keepalive, for Codex WebSocket sessions mitmproxy relays."""

from codexbridge.addons.keepalive import Keepalive

addons = [Keepalive()]
