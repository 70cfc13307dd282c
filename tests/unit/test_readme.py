"""The README tells the truth about every option and every command."""

from __future__ import annotations

import re

from mitmproxy.test import taddons

from codexbridge.addons.bridge import CodexBridge
from codexbridge.tools.cli import build_parser
from support import ROOT

README = (ROOT / "README.md").read_text()


def test_every_option_is_documented_with_its_default() -> None:
    with taddons.context(CodexBridge()) as tctx:
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
