"""How a live request is compared with the recorded one, and how a divergence reads (sans-IO)."""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from codexbridge.replay.rules import MISSING, Normalizer, canonical, first_difference
from codexbridge.testing.scrub import RecordedRequest, RequestHook, apply_hook

_DIFF_LINES = 60
_LINE_CHARS = 200
_ONE_SIDED_LINES = 16


@dataclass
class Divergence:
    """One request that did not go as recorded: it differed, was not recorded, or was recorded but never came."""

    what: str  # e.g. "POST #2 to /v1/responses" or "client frame #3 of the WebSocket session"
    recording: str  # the file the request belongs to ("" when none does)
    expected: Any = None  # the recorded request, canonical (None: nothing was recorded for it)
    came: Any = None  # the live request, canonical (None: it never came)
    note: str = ""

    @property
    def summary(self) -> str:
        if self.came is None:
            return f"{self.what}: recorded but never requested{self._note()}"
        if self.expected is None:
            return f"{self.what}: not in the recording{self._note()}"
        found = first_difference(self.expected, self.came)
        if found is None:
            return f"{self.what}: {self.note or 'differs'}"
        path, expected, came = found
        if expected is MISSING:
            where = f"unexpected {_show(came)}"
        elif came is MISSING:
            where = f"missing (expected {_show(expected)})"
        elif isinstance(expected, str) and isinstance(came, str):
            at = _common_prefix(expected, came)
            where = f"expected {_show(expected, at)}, came {_show(came, at)}"
        else:
            where = f"expected {_show(expected)}, came {_show(came)}"
        return f"{self.what}: {path}: {where}{self._note()}"

    def _note(self) -> str:
        return f" ({self.note})" if self.note else ""

    def diff(self) -> str:
        """What was expected and what came, as a unified diff: of the differing text when one string differs
        (the instructions, a message), else of the whole request."""
        found = first_difference(self.expected, self.came) if self.expected is not None and self.came is not None else None
        if found is not None and isinstance(found[1], str) and isinstance(found[2], str) \
                and ("\n" in found[1] + found[2] or len(found[1]) + len(found[2]) > 2 * _LINE_CHARS):
            names = (f"recorded {found[0]}", f"came {found[0]}")
            expected, came = found[1].splitlines(), found[2].splitlines()
        else:
            names = ("recorded", "came")
            expected, came = _lines(self.expected), _lines(self.came)
        lines = _clip(list(difflib.unified_diff(expected, came, *names, n=2, lineterm="")))
        limit = _DIFF_LINES if found is not None else _ONE_SIDED_LINES  # a request that only one side has
        if len(lines) > limit:
            lines = [*lines[:limit], f"... ({len(lines) - limit} more diff lines)"]
        return "\n".join(lines)

    def explain(self) -> str:
        head = f"{self.summary}\n  recording: {self.recording}" if self.recording else self.summary
        body = self.diff()
        return f"{head}\n{body}" if body else head


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _show(value: Any, at: int = 0, width: int = 100) -> str:
    """A value in one short line; a long string as the part around position `at`, where it differs."""
    if not isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= width else text[: width - 3] + "..."
    start = max(0, min(at - width // 3, len(value) - width))
    part = value[start: start + width]
    return ("..." if start else "") + repr(part) + ("..." if start + width < len(value) else "")


def _clip(lines: list[str]) -> list[str]:
    """Long diff lines cut to a window around where each removed line and the added line paired with it differ."""
    out = list(lines)
    i = 0
    while i < len(lines):
        if not lines[i].startswith("-") or lines[i].startswith("---"):
            i += 1
            continue
        minus = i
        while i < len(lines) and lines[i].startswith("-"):
            i += 1
        plus = i
        while i < len(lines) and lines[i].startswith("+") and not lines[i].startswith("+++"):
            i += 1
        removed, added = range(minus, plus), range(plus, i)
        for k, r in enumerate(removed):
            a = added[k] if k < len(added) else None
            at = _common_prefix(lines[r], lines[a]) if a is not None else 0
            for n in (r, a):
                if n is not None and len(lines[n]) > _LINE_CHARS:
                    start = max(1, at - _LINE_CHARS // 3)
                    out[n] = lines[n][0] + ("..." if start > 1 else "") + lines[n][start: start + _LINE_CHARS] + "..."
    return [line if len(line) <= _LINE_CHARS + 10 else line[:_LINE_CHARS] + "..." for line in out]


def _lines(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.splitlines()
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True).splitlines()


def report(divergences: Sequence[Divergence]) -> str:
    """The failure message: the first divergence in full, the others one line each."""
    first, rest = divergences[0], divergences[1:]
    text = f"codexbridge: {len(divergences)} request(s) diverged from the recording.\nFirst divergence: {first.explain()}"
    if rest:
        text += "\nThen:\n" + "\n".join(f"  - {d.summary}" for d in rest[:10])
        if len(rest) > 10:
            text += f"\n  ... and {len(rest) - 10} more"
    return text


def parse_ignore(patterns: Sequence[str]) -> tuple[frozenset[str], tuple[tuple[str, ...], ...]]:
    """Bare names are ignored at any depth; dotted paths from the body's top, `*` standing for any key or index."""
    anywhere = frozenset(p for p in patterns if p and "." not in p and p != "*")
    anchored = tuple(tuple(p.removeprefix("$.").split(".")) for p in patterns if "." in p)
    return anywhere, anchored


def strip_ignored(value: Any, anywhere: frozenset[str], anchored: tuple[tuple[str, ...], ...]) -> Any:
    """The value without the ignored fields (list items named by an anchored path are removed too)."""

    def here(key: str) -> tuple[bool, tuple[tuple[str, ...], ...]]:
        drop = any(len(p) == 1 and p[0] in (key, "*") for p in anchored)
        return drop, tuple(p[1:] for p in anchored if len(p) > 1 and p[0] in (key, "*"))

    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            drop, deeper = here(key)
            if not drop and key not in anywhere:
                out[key] = strip_ignored(item, anywhere, deeper)
        return out
    if isinstance(value, list):
        items = []
        for index, item in enumerate(value):
            drop, deeper = here(str(index))
            if not drop:
                items.append(strip_ignored(item, anywhere, deeper))
        return items
    return value


class Matcher:
    """The matching options of one test: fields to ignore, and the request hook applied to live requests too
    (a recorded request went through it before it was written, so the live one must as well to compare)."""

    def __init__(self, ignore: Sequence[str] = (), before_record_request: RequestHook | None = None) -> None:
        self.ignore = list(ignore)
        self.anywhere, self.anchored = parse_ignore(self.ignore)
        self.hook = before_record_request

    def canonical(self, text: str) -> Any:
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return strip_ignored(canonical(value), self.anywhere, self.anchored)

    def live(self, request: RecordedRequest, normalizer: Normalizer) -> Any:
        """A live request as the recording would hold it: redacted and elided alike, through the hook, canonical."""
        normalized = dataclasses.replace(request, body=normalizer.text(request.body))
        return self.canonical(apply_hook(self.hook, normalized).body)

    def compare(self, what: str, recording: str, expected_text: str, request: RecordedRequest,
                normalizer: Normalizer) -> Divergence | None:
        expected = self.canonical(expected_text)
        came = self.live(request, normalizer)
        return None if expected == came else Divergence(what, recording, expected, came)

