"""A POST answer's quota headers as the `codex.rate_limits` events Codex reads over WebSocket (sans-IO).

Over HTTP, Codex reads quota from every answer's headers (`parse_all_rate_limits` in its
`codex-rs/codex-api/src/rate_limits.rs`): the `x-codex-*` family always, even when it is empty, and each other
`x-{limit}-primary-used-percent` family that carries data, all with the `x-codex-credits-*` credits. Over
WebSocket it reads the same snapshot only from a `codex.rate_limits` event (`parse_rate_limit_event`). The events
below give Codex, snapshot for snapshot, what the headers give it over HTTP. What the event cannot state: a
family's `x-{limit}-limit-name` (the event's `limit_name` field names the limit id instead).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

RATE_LIMIT_EVENT = "codex.rate_limits"
_FAMILY = re.compile(r"x-(.+)-primary-used-percent")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)", re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?\d+")
_I64 = 2**63


def first_values(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header name (lower case) -> its first value, as Codex's HeaderMap.get sees them."""
    values: dict[str, str] = {}
    for name, value in headers:
        values.setdefault(name.lower(), value)
    return values


def _float(value: str | None) -> float | None:
    """Rust's `str::parse::<f64>` (no spaces, no '_'), finite values only."""
    if value is None or not _NUMBER.fullmatch(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: str | None) -> int | None:
    """Rust's `str::parse::<i64>`."""
    if value is None or not _INTEGER.fullmatch(value):
        return None
    number = int(value)
    return number if -_I64 <= number < _I64 else None


def _bool(value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() == "true" or value == "1":
        return True
    if value.lower() == "false" or value == "0":
        return False
    return None


def _window(values: dict[str, str], prefix: str, which: str) -> dict[str, Any] | None:
    used = _float(values.get(f"{prefix}-{which}-used-percent"))
    if used is None:
        return None
    minutes = _int(values.get(f"{prefix}-{which}-window-minutes"))
    reset_at = _int(values.get(f"{prefix}-{which}-reset-at"))
    if used == 0.0 and not minutes and reset_at is None:  # Codex keeps a window only when it says something
        return None
    return {"used_percent": used, "window_minutes": minutes, "reset_at": reset_at}


def _credits(values: dict[str, str]) -> dict[str, Any] | None:
    has_credits = _bool(values.get("x-codex-credits-has-credits"))
    unlimited = _bool(values.get("x-codex-credits-unlimited"))
    if has_credits is None or unlimited is None:
        return None
    balance = (values.get("x-codex-credits-balance") or "").strip() or None
    return {"has_credits": has_credits, "unlimited": unlimited, "balance": balance}


def limit_id(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def rate_limit_events(headers: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """One `codex.rate_limits` event per quota family of a POST answer, in the order Codex reads them over HTTP:
    the `codex` family first (always: without quota headers it is the empty snapshot HTTP mode shows too), then
    every other family with data, by name."""
    values = first_values(headers)
    credits = _credits(values)
    others = sorted({limit_id(m.group(1)) for name in values if (m := _FAMILY.fullmatch(name))} - {"codex"})
    events = []
    for family in ["codex", *others]:
        prefix = "x-" + family.replace("_", "-")
        primary, secondary = _window(values, prefix, "primary"), _window(values, prefix, "secondary")
        if family != "codex" and primary is None and secondary is None and credits is None:
            continue
        event: dict[str, Any] = {"type": RATE_LIMIT_EVENT, "metered_limit_name": family}
        if primary is not None or secondary is not None:
            event["rate_limits"] = {"primary": primary, "secondary": secondary}
        if credits is not None:
            event["credits"] = credits
        events.append(event)
    return events
