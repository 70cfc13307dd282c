"""Codex transport parity: one scripted scenario over HTTP, bridged WebSocket and native WebSocket, normalised."""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import ROOT, need
from support.codex import codex_binary_for, installed_version, quiet_codex_config

HTTP, BRIDGED, NATIVE = "http", "bridged", "native"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Ids the mock upstream and the bridge make (per run), and the mock's request ids.
_MINTED = re.compile(r"\b(?:resp_mock_\d+|resp_cb_[0-9a-f]{32}|req_mock_\d+|(?:msg|fc|cmp)_[0-9a-f]{12}|call_[0-9a-f]{8})\b")
# The base URL each leg's Codex was given (the upstream, the bridge, the native upstream), as Codex's errors name it.
_LOOPBACK_URL = re.compile(r"\b(?:https?|wss?)://127\.0\.0\.1:\d+")
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}[-:]\d{2}[-:]\d{2}(?:\.\d+)?Z?")
_TOOL_RUN = [(re.compile(r"Chunk ID: \w+"), "Chunk ID: <chunk>"),
             (re.compile(r"Wall time: [\d.]+ seconds"), "Wall time: <t> seconds"),
             (re.compile(r"succeeded in \d+ms"), "succeeded in <t>ms")]
_TIME_KEYS = ("timestamp", "create_time", "x-codex-ws-stream-request-start-ms", "process_id")
_TIME_SUFFIXES = ("_at", "_ms", "_at_unix_ms")
# Headers a transport sets for itself (framing, the connection), not Codex's request.
_TRANSPORT_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


def version_label(version: str) -> str:
    """A matrix entry with the exact version it runs, for test ids and reports: `latest=0.171.0`, `0.169.0`,
    `oldest=0.166.0`."""
    binary = codex_binary_for(version)
    exact = installed_version(str(binary)) if binary is not None else "not installed"
    return version if exact == version else f"{version}={exact}"


@dataclass(frozen=True)
class Scenario:
    """A scripted Codex session: prompts (the first by `codex exec`, the rest by `codex exec resume --last`)."""

    name: str
    prompts: tuple[str, ...]
    config: str = ""  # extra top-level config.toml keys
    provider_name: str = "Local mock"  # "OpenAI" makes Codex use remote compaction (compaction_trigger)
    upgrade_headers: tuple[str, ...] = ()  # the native WebSocket upstream's 101 headers (NAME:VALUE)
    prime_bridge: bool = False  # run the bridged session twice and compare the second (what the bridge learns)
    provider: tuple[tuple[str, Any], ...] = ()  # extra provider keys (stream_idle_timeout_ms, stream_max_retries)


@dataclass
class CodexResult:
    returncodes: list[int]
    stdout: list[str]
    stderr: list[str]
    rollout: list[dict[str, Any]]
    requests: list[dict[str, Any]]  # what the upstream received (POSTs; native: WebSocket frames)
    home: Path
    workdir: Path


@dataclass
class CodexLeg:
    """One way to run a scenario: a Codex binary, a base URL and whether Codex uses the WebSocket mode."""

    binary: Path
    base_url: str
    websockets: bool
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, scenario: Scenario, fetch_requests: Callable[[], list[dict[str, Any]]],
            timeout: float = 120) -> CodexResult:
        home = Path(tempfile.mkdtemp(prefix="codex-home-", dir=self.tmp))
        work = Path(tempfile.mkdtemp(prefix="codex-work-", dir=self.tmp))
        provider = {"name": scenario.provider_name, "base_url": self.base_url, "env_key": "MOCK_API_KEY",
                    "wire_api": "responses", "request_max_retries": 0, "stream_max_retries": 1,
                    "supports_websockets": self.websockets, **dict(scenario.provider)}
        quiet = quiet_codex_config(ROOT / "recordings" / "instructions.md", installed_version(str(self.binary)))
        (home / "config.toml").write_text(
            'model = "gpt-5.5"\nmodel_provider = "mock"\n' + scenario.config + "\n" + quiet
            + "\n[model_providers.mock]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in provider.items()) + "\n")
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "CODEX_HOME": str(home),
               "MOCK_API_KEY": "sk-test-codexbridge", "NO_COLOR": "1", **self.env}
        codes, outs, errs = [], [], []
        for i, prompt in enumerate(scenario.prompts):
            args = ["exec", "--skip-git-repo-check", "--sandbox", "danger-full-access",
                    *(["resume", "--last"] if i else []), prompt]
            proc = subprocess.run([str(self.binary), *args], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
            codes.append(proc.returncode)
            outs.append(proc.stdout)
            errs.append(proc.stderr)
        rollout = [json.loads(line) for path in sorted((home / "sessions").rglob("rollout-*.jsonl"))
                   for line in path.read_text().splitlines() if line.strip()]
        return CodexResult(codes, outs, errs, rollout, fetch_requests(), home, work)


class Normaliser:
    """Replaces what differs between two runs of the same session (ids, times, paths) with stable placeholders.

    Ids become `<id-N>` in order of first appearance, so the same structure normalises to the same text.
    """

    def __init__(self, *paths: Path) -> None:
        self.paths = [str(p) for p in paths if str(p)]
        self.ids: dict[str, str] = {}

    def _id(self, match: re.Match[str]) -> str:
        return self.ids.setdefault(match.group(0), f"<id-{len(self.ids) + 1}>")

    def text(self, value: str) -> str:
        for path in self.paths:
            value = value.replace(path, "<path>")
        value = _LOOPBACK_URL.sub("<base-url>", value)
        value = _UUID.sub(self._id, value)
        value = _MINTED.sub(self._id, value)
        value = _ISO_TIME.sub("<time>", value)
        for pattern, replacement in _TOOL_RUN:
            value = pattern.sub(replacement, value)
        return value

    def value(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            if set(value) == {"secs", "nanos"}:  # a measured duration (a tool's run time)
                return "<duration>"
            return {k: self.value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, key) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                key in _TIME_KEYS or key.endswith(_TIME_SUFFIXES)):
            return "<time>"
        if isinstance(value, str):
            if key in _TIME_KEYS and value.isdigit():
                return "<time>"
            if value[:1] in "{[" and value[-1:] in "}]":  # JSON inside a string (x-codex-turn-metadata)
                try:
                    return json.dumps(self.value(json.loads(value), key), sort_keys=True)
                except ValueError:
                    pass
            return self.text(value)
        return value


def normalise_rollout(result: CodexResult) -> list[str]:
    """One line per rollout item: its type and normalised payload (key order fixed)."""
    norm = Normaliser(result.home, result.workdir)
    lines = []
    for item in result.rollout:
        payload = norm.value(item.get("payload"))
        lines.append(f"{item.get('type')} {json.dumps(payload, sort_keys=True)}")
    return lines


def normalise_output(result: CodexResult) -> list[str]:
    norm = Normaliser(result.home, result.workdir)
    out = []
    for i, (code, stdout, stderr) in enumerate(zip(result.returncodes, result.stdout, result.stderr, strict=True)):
        out.append(f"--- run {i}: exit {code}")
        out.extend("stdout: " + norm.text(line) for line in stdout.splitlines())
        out.extend("stderr: " + norm.text(line) for line in stderr.splitlines())
    return out


def request_headers(record: dict[str, Any]) -> list[tuple[str, str]]:
    """A request's headers as Codex meant them: lower-case names, sorted, without the transport's own."""
    return sorted((name.lower(), value) for name, value in record["headers"]
                  if name.lower() not in _TRANSPORT_HEADERS)


def normalise_requests(result: CodexResult) -> list[str]:
    """The POSTs the upstream received, as normalised header and body lines (sorted keys)."""
    norm = Normaliser(result.home, result.workdir)
    lines = []
    for i, record in enumerate(r for r in result.requests if r["method"] == "POST"):
        lines.append(f"--- POST {i} {record['path']}")
        lines.extend(f"header {name}: {norm.value(value, name)}" for name, value in request_headers(record))
        lines.append("body " + json.dumps(norm.value(record["json"]), sort_keys=True))
    return lines


@dataclass(frozen=True)
class Exclusion:
    """A documented difference Codex itself shows between its transports (native WebSocket differs from HTTP the
    same way): rollout/output/request lines matching `pattern` are left out of the bridged comparison."""

    name: str
    why: str
    pattern: re.Pattern[str]


_PLACEHOLDER = re.compile(r"<id-\d+>")


def without(lines: list[str], exclusions: list[Exclusion]) -> list[str]:
    """The lines no exclusion matches, with ids numbered again (a dropped line must not shift the others)."""
    kept = [line for line in lines if not any(e.pattern.search(line) for e in exclusions)]
    ids: dict[str, str] = {}
    return [_PLACEHOLDER.sub(lambda m: ids.setdefault(m.group(0), f"<id-{len(ids) + 1}>"), line) for line in kept]


def diff(a: list[str], b: list[str], a_name: str, b_name: str, context: int = 2) -> str:
    """A unified diff with long lines cut down around their first difference."""
    return "\n".join(difflib.unified_diff(a, b, a_name, b_name, n=context, lineterm=""))


def line_diff(a: str, b: str, width: int = 160) -> str:
    """Where two long lines first differ, with some context."""
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    start = max(0, i - width // 2)
    return f"  a: ...{a[start:start + width]}...\n  b: ...{b[start:start + width]}..."


def compare(a: list[str], b: list[str]) -> list[tuple[str | None, str | None]]:
    """Pairs of differing lines (None where one side has no line there)."""
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    pairs: list[tuple[str | None, str | None]] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        left, right = a[i1:i2], b[j1:j2]
        for k in range(max(len(left), len(right))):
            pairs.append((left[k] if k < len(left) else None, right[k] if k < len(right) else None))
    return pairs


def explain(pairs: list[tuple[str | None, str | None]], a_name: str, b_name: str, limit: int = 6) -> str:
    out = []
    for left, right in pairs[:limit]:
        if left is not None and right is not None:
            out.append(f"{a_name} vs {b_name}:\n" + line_diff(left, right))
        else:
            out.append(f"only in {a_name if right is None else b_name}: {(left or right or '')[:300]}")
    if len(pairs) > limit:
        out.append(f"... {len(pairs) - limit} more differing lines")
    return "\n".join(out)


def need_codex(version: str) -> Path:
    binary = codex_binary_for(version)
    need(f"Codex {version} (scripts/setup.sh --test with CODEXBRIDGE_CODEX_VERSIONS installs it)", binary is not None)
    assert binary is not None
    return binary


def scratch(tmp: Path) -> Iterator[Path]:
    """A folder removed afterwards (Codex homes hold sqlite state)."""
    path = Path(tempfile.mkdtemp(dir=tmp))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
