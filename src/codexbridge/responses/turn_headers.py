"""The headers HTTP-mode Codex sends with each request, rebuilt from a frame's `client_metadata` (sans-IO).

Over WebSocket, Codex sends its headers once, on the upgrade (with the session's `x-codex-turn-metadata`, whose
`request_kind` is "prewarm"), and what belongs to one request in that request's `client_metadata`: its own
`x-codex-turn-metadata`, `x-codex-window-id` (it changes after a compaction), the turn's sticky-routing
`x-codex-turn-state` once the server named one, trace context as `ws_request_header_<name>`, and when the frame
left (`x-codex-ws-stream-request-start-ms`). Over HTTP the same values are headers of each POST, and the body's
`client_metadata` keeps only the turn metadata, window, session, thread, turn and installation ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# client_metadata key -> the header HTTP mode sends with its value, and whether HTTP mode keeps the key in the body
PER_REQUEST: dict[str, tuple[str, bool]] = {
    "x-codex-turn-metadata": ("x-codex-turn-metadata", True),
    "x-codex-window-id": ("x-codex-window-id", True),
    "x-codex-turn-state": ("x-codex-turn-state", False),
}
WS_REQUEST_HEADER = "ws_request_header_"  # ws_request_header_traceparent -> the traceparent header
WS_ONLY_KEYS = frozenset({"x-codex-ws-stream-request-start-ms"})
# The sticky-routing token belongs to one turn: from the upgrade it would reach the next turn's requests too.
PER_TURN_HEADERS = frozenset({"x-codex-turn-state"})
# What Codex can send as a header value at all (visible ASCII, space, tab); anything else it leaves out.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


def split_client_metadata(metadata: Any) -> tuple[Any, list[tuple[str, str]]]:
    """(the body's client_metadata as HTTP mode sends it, the headers HTTP mode sends for this request).

    A client_metadata that is not an object is left alone; one that ends up empty is left out of the body."""
    if not isinstance(metadata, dict):
        return metadata, []
    body: dict[str, Any] = {}
    headers: list[tuple[str, str]] = []
    for key, value in metadata.items():
        if key in WS_ONLY_KEYS:
            continue
        if key in PER_REQUEST:
            header, keep = PER_REQUEST[key]
        elif key.startswith(WS_REQUEST_HEADER) and len(key) > len(WS_REQUEST_HEADER):
            header, keep = key[len(WS_REQUEST_HEADER):].replace("_", "-"), False
        else:
            body[key] = value
            continue
        if keep:
            body[key] = value
        if isinstance(value, str) and value and _HEADER_VALUE.fullmatch(value):
            headers.append((header, value))
    return (body or None), headers


def request_headers(base: Iterable[tuple[str, str]], own: list[tuple[str, str]],
                    metadata_present: bool) -> list[tuple[str, str]]:
    """The connection's headers with this request's own: in the place (and name case) of the upgrade's, or
    added. When the frame has a client_metadata, the upgrade's per-turn headers it does not repeat are left out."""
    values = {name.lower(): value for name, value in own}
    out: list[tuple[str, str]] = []
    for name, value in base:
        key = name.lower()
        if key in values:
            out.append((name, values.pop(key)))
        elif not (metadata_present and key in PER_TURN_HEADERS):
            out.append((name, value))
    out.extend((name, value) for name, value in own if name.lower() in values)
    return out
