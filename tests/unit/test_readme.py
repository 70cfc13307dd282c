"""The README tells the truth about every option and every command."""

from __future__ import annotations

import re

from mitmproxy.test import taddons

from codexbridge.addons.bridge import CodexBridge
from codexbridge.addons.keepalive import Keepalive
from codexbridge.addons.metrics import Collector, Counts, Metrics
from codexbridge.addons.recorder import Recorder
from codexbridge.tools.cli import build_parser
from support import ROOT

README = (ROOT / "README.md").read_text()


def test_every_option_is_documented_with_its_default() -> None:
    with taddons.context(CodexBridge(), Keepalive(), Recorder(), Metrics()) as tctx:  # what addons/bridge.py loads
        names = [n for n in tctx.options.keys() if n.startswith("codexbridge_")]
        assert len(names) >= 15
        for name in names:
            row = re.search(rf"^\| `{name}` \| ([^|]+) \|", README, re.M)
            assert row, f"{name} is missing from the README's options table"
            default = tctx.options._options[name].default
            shown = row.group(1).strip().strip("`")
            if default in ("", []):
                assert shown.startswith("("), (name, shown)
            else:
                assert shown == str(default).lower() if isinstance(default, bool) else shown == str(default), (name, shown)


def test_every_subcommand_is_documented() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        assert f"codexbridge {name}" in README, f"`codexbridge {name}` is not in the README"


def test_the_two_commands_exist() -> None:
    assert "./scripts/run" in README and "./scripts/test" in README
    assert (ROOT / "scripts" / "run").exists() and (ROOT / "scripts" / "test").exists()
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()


def code_spans(text: str) -> list[str]:
    """Inline code spans and the lines of fenced code blocks."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    outside = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    return [line for block in blocks for line in block.splitlines()] + re.findall(r"`([^`\n]+)`", outside)


def test_every_subcommand_flag_the_readme_names_is_in_its_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    named: dict[str, set[str]] = {}
    for span in code_spans(README):
        for m in re.finditer(r"codexbridge ([a-z][a-z-]*)\b(.*)", span):
            if m.group(1) in sub.choices:
                # up to a comment, the next command, or the end of a $(...) or quoted command inside another one
                rest = re.split(r"\s#\s|\bcodexbridge |[)\"|;]", m.group(2))[0]
                named.setdefault(m.group(1), set()).update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest))
    assert {"run", "cluster", "demo-upstream", "replay", "scripts"} <= set(named)
    assert {"--websocket", "--tls-cert", "--tls-key"} <= named["demo-upstream"]
    missing = [f"codexbridge {name} {flag}" for name, flags in sorted(named.items()) for flag in sorted(flags)
               if flag not in sub.choices[name].format_help()]
    assert missing == [], "the README names flags these subcommands do not take"


def test_every_metric_is_documented() -> None:
    documented = {f.name + ("_total" if f.type == "counter" else "") for f in Collector(Counts()).collect()}
    assert len(documented) == 12
    for name in documented:
        assert re.search(rf"^\| `{name}` \|", README, re.M), f"{name} is missing from the README's metrics table"
