"""`codexbridge diff`: what changed between two recordings, ignoring ids, timestamps and chunk boundaries."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from codexbridge.recording.schema import (
    ClientFrame,
    Close,
    Error,
    Header,
    Ping,
    Recording,
    ServerFrame,
    TextKeepalive,
    ToClient,
    UpstreamEnd,
    UpstreamRequest,
    UpstreamResponse,
)
from codexbridge.replay.rules import canonical, describe_difference

# Request headers whose values change on every run (their presence still counts).
VOLATILE_HEADERS = frozenset({
    "x-client-request-id", "session-id", "session_id", "thread-id", "x-codex-turn-metadata", "x-codex-window-id",
    "sec-websocket-key", "host", "content-length",
})
# Keys whose values frames to the client carry anew on every run (x-request-id: in an error frame's headers).
ID_KEYS = frozenset({"id", "item_id", "call_id", "response_id", "previous_response_id", "x-request-id"})
_NAME = re.compile(r'"<[\w-]+:\d+>"')  # an id as canonical() and mask_ids() rename it


@dataclass(slots=True)
class Item:
    """One significant event (a frame of a multi-frame write counts alone) in comparable form."""

    index: str  # "12", or "12.3" for the fourth frame of event 12
    kind: str
    value: Any  # normalized JSON, or a plain string / number

    @property
    def key(self) -> str:
        return self.label + "\0" + json.dumps(self.value, sort_keys=True, ensure_ascii=False)

    @property
    def local(self) -> Any:
        """The value with ids numbered within this item alone: equal when only earlier events shifted the numbering."""
        names: dict[str, str] = {}
        text = json.dumps(self.value, ensure_ascii=False)
        return json.loads(_NAME.sub(lambda m: names.setdefault(m.group(0), f'"<#{len(names)}>"'), text))

    @property
    def label(self) -> str:
        """The kind, and the `type` of a JSON frame: what a difference is about, and what pairs like with like."""
        typ = self.value.get("type") if isinstance(self.value, dict) else None
        return f"{self.kind} {typ.removeprefix('response.')}" if isinstance(typ, str) else self.kind


@dataclass(slots=True)
class Difference:
    section: str  # header | events | timing
    a: str | None  # where in A (event index), None when only in B
    b: str | None
    what: str
    detail: str


def mask_ids(value: Any, names: dict[str, str]) -> Any:
    """A frame to the client with ids renamed by order of first appearance and created_at zeroed."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in ID_KEYS and isinstance(v, str):
                out[k] = names.setdefault(v, f"<{k}:{len(names)}>")
            else:
                out[k] = "<created_at>" if k == "created_at" else mask_ids(v, names)
        return out
    if isinstance(value, list):
        return [mask_ids(v, names) for v in value]
    return value


def _path(url: str) -> str:
    """A URL without its scheme and host (a recording's upstream usually listens on a random port)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def significant(rec: Recording) -> list[Item]:
    names: dict[str, str] = {}  # one renaming for the whole recording, so references between events still count
    out: list[Item] = []
    for i, e in enumerate(rec.events):
        if isinstance(e, ClientFrame):
            out.append(Item(str(i), "client_frame", canonical(_parse(e.text), names) if e.text is not None
                            else f"binary {e.b64}"))
        elif isinstance(e, UpstreamRequest):
            out.append(Item(str(i), "upstream_request", {"request": f"{e.method} {_path(e.url)}",
                                                         "body": canonical(_parse(e.body), names)}))
        elif isinstance(e, (ToClient, ServerFrame)):
            texts = e.frames if isinstance(e, ToClient) else [e.text] if e.text is not None else []
            for j, text in enumerate(texts):
                where = f"{i}.{j}" if isinstance(e, ToClient) and len(texts) > 1 else str(i)
                out.append(Item(where, "to_client", mask_ids(_parse(text), names)))
        elif isinstance(e, UpstreamResponse):
            out.append(Item(str(i), "upstream_response", e.status))
        elif isinstance(e, UpstreamEnd):
            out.append(Item(str(i), "upstream_end", e.error or "ok"))
        elif isinstance(e, Close):
            out.append(Item(str(i), "close", e.code))
        elif isinstance(e, Error):
            out.append(Item(str(i), "error", f"{e.where}: {e.message}"))
    return out


def _header_view(h: Header) -> dict[str, Any]:
    headers: dict[str, list[str]] = {}
    for n, v in h.request.headers:
        headers.setdefault(n.lower(), []).append("<volatile>" if n.lower() in VOLATILE_HEADERS else v)
    return {
        "mode": h.mode, "upstream path": _path(h.upstream),
        "request": f"{h.request.method or ''} {_path(h.request.url or '')}".strip(),
        "elide_over": h.elide_over, "redaction": h.redaction, "request headers": headers,
    }


def _describe(a: Item, b: Item) -> str:
    return describe_difference(a.local, b.local) or describe_difference(a.value, b.value) or "differ"


def _short(item: Item) -> str:
    value = {k: v for k, v in item.value.items() if k != "type"} if isinstance(item.value, dict) else item.value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _align(ia: list[Item], ib: list[Item], out: list[Difference], by_label: bool = False) -> None:
    """Appends the differences of two event sequences; a changed stretch is aligned again by label (like with like)."""
    keys = [[x.label if by_label else x.key for x in items] for items in (ia, ib)]
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(None, keys[0], keys[1], autojunk=False).get_opcodes():
        if op == "equal" and by_label:  # same kinds, different contents
            out += [Difference("events", x.index, y.index, x.label, _describe(x, y))
                    for x, y in zip(ia[a0:a1], ib[b0:b1], strict=False) if x.key != y.key
                    and not (out and x.local == y.local)]  # ids renumbered by the differences before
        elif op == "replace" and not by_label:
            _align(ia[a0:a1], ib[b0:b1], out, by_label=True)
        elif op != "equal":
            out += [Difference("events", x.index, None, x.label, f"only in A: {_short(x)}") for x in ia[a0:a1]]
            out += [Difference("events", None, y.index, y.label, f"only in B: {_short(y)}") for y in ib[b0:b1]]


def diff(a: Recording, b: Recording, timing: bool = False) -> list[Difference]:
    out: list[Difference] = []
    ha, hb = _header_view(a.header), _header_view(b.header)
    for key in ha:
        found = describe_difference(ha[key], hb[key], "header." + key.replace(" ", "_"))
        if found:
            out.append(Difference("header", None, None, key, found))
    if a.complete != b.complete:
        state = {True: "complete", False: "cut off"}
        out.append(Difference("header", None, None, "complete", f"A is {state[a.complete]}, B is {state[b.complete]}"))
    _align(significant(a), significant(b), out)
    if timing:
        for kind in (Ping, TextKeepalive):
            na, nb = (sum(isinstance(e, kind) for e in r.events) for r in (a, b))
            if na != nb:
                name = kind.model_fields["kind"].default
                out.append(Difference("timing", None, None, name, f"{na} in A, {nb} in B"))
    return out


def render(diffs: list[Difference], console: Console, name_a: str = "A", name_b: str = "B") -> None:
    if not diffs:
        console.print(f"[green]recordings are equivalent[/green] ({escape(name_a)}, {escape(name_b)})")
        return
    console.print(f"[bold]{len(diffs)} difference(s)[/bold]  A = {escape(name_a)}  B = {escape(name_b)}"
                  "  (# = event index)")
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("section", no_wrap=True)
    table.add_column("A #", justify="right", no_wrap=True)
    table.add_column("B #", justify="right", no_wrap=True)
    table.add_column("what", no_wrap=True)
    table.add_column("difference (A expected, B got)", overflow="fold")
    for d in diffs:
        table.add_row(d.section, d.a or "—", d.b or "—", d.what, escape(d.detail))
    console.print(table)
