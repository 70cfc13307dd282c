"""codexbridge: serve Codex's Responses WebSocket mode over HTTP+SSE gateways, from mitmproxy."""

__version__ = "0.1.0"
