"""Which headers cross from the WebSocket handshake to the upstream POST, and back (sans-IO)."""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        # the bridge sets these itself (and asks for no content coding, as HTTP-mode Codex with a custom provider)
        "accept",
        "accept-encoding",
        "content-type",
    }
)

# Upstream response headers worth passing to the client inside an error frame.
ERROR_HEADER_PREFIXES = ("retry-after", "x-ratelimit-", "x-request-id", "request-id", "openai-", "x-codex-", "cf-ray")

BRIDGE_HEADERS = (
    ("content-type", "application/json"),
    ("accept", "text/event-stream"),
)


def _without_ws_beta(value: str) -> str:
    tokens = [t.strip() for t in value.split(",")]
    return ", ".join(t for t in tokens if t and not t.lower().startswith("responses_websockets"))


def upstream_request_headers(handshake: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The end-to-end headers of the handshake, plus the bridge's own, each name at most once.

    Names compare case-insensitively; a name the client repeated is joined with ", " (RFC 9110
    5.3), except that the bridge's own headers always win.
    """
    pairs = list(handshake)
    dropped = set(HOP_BY_HOP)
    for name, value in pairs:
        if name.lower() == "connection":
            dropped.update(t.strip().lower() for t in value.split(",") if t.strip())
    merged: dict[str, tuple[str, list[str]]] = {}
    for name, value in pairs:
        key = name.lower()
        if key in dropped or key.startswith("sec-websocket-"):
            continue
        if key == "openai-beta":
            value = _without_ws_beta(value)
            if not value:
                continue
        if key in merged:
            merged[key][1].append(value)
        else:
            merged[key] = (name, [value])
    out = [(name, ", ".join(values)) for name, values in merged.values()]
    out.extend(BRIDGE_HEADERS)
    return out


def error_headers(response_headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The upstream response headers a client may act on (retry hints, request ids, limits)."""
    kept: dict[str, str] = {}
    for name, value in response_headers:
        key = name.lower()
        if key.startswith(ERROR_HEADER_PREFIXES):
            kept[key] = value
    return kept
