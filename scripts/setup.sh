#!/usr/bin/env bash
# Idempotent setup: a Python >= 3.12 venv in .venv with codexbridge installed; with --test also the
# test extras and the pinned Codex CLI (npm, into .tools/). Sourced by scripts/run and scripts/test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CODEX_VERSION="0.169.0"
WANT_TEST=0
[ "${1:-}" = "--test" ] && WANT_TEST=1

find_python() {
  local c
  for c in python3.13 python3.12 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    local root; root="$(pyenv root)"
    for c in $(ls -d "$root"/versions/3.1[2-9]* 2>/dev/null | sort -rV); do
      if [ -x "$c/bin/python3" ]; then echo "$c/bin/python3"; return 0; fi
    done
  fi
  return 1
}

if [ ! -x "$ROOT/.venv/bin/python" ] || ! "$ROOT/.venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
  PY="$(find_python)" || { echo "codexbridge needs Python >= 3.12 (mitmproxy 12); none found." >&2; exit 1; }
  rm -rf "$ROOT/.venv"
  "$PY" -m venv "$ROOT/.venv"
fi

extras=""; [ "$WANT_TEST" = 1 ] && extras="[test]"
stamp="$ROOT/.venv/.codexbridge-installed$extras"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT$extras"
  touch "$stamp"
fi

if [ "$WANT_TEST" = 1 ]; then
  codex="$ROOT/.tools/codex/node_modules/.bin/codex"
  if [ ! -x "$codex" ] || [ "$("$codex" --version 2>/dev/null)" != "codex-cli $CODEX_VERSION" ]; then
    command -v npm >/dev/null 2>&1 || { echo "npm is needed to install the Codex CLI for the tests." >&2; exit 1; }
    mkdir -p "$ROOT/.tools/codex"
    npm install --silent --no-audit --no-fund --prefix "$ROOT/.tools/codex" "@openai/codex@$CODEX_VERSION" >/dev/null
  fi
  # Debian packages the tests drive for real: nginx, iptables and iproute2 (transparent mode in a netns)
  missing=()
  [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
  [ -x /usr/sbin/iptables ] || command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null 2>&1 \
        || echo "warning: could not install ${missing[*]}; tests that need them fail under CI=true." >&2
    else
      echo "warning: ${missing[*]} missing and not root: tests that need them fail under CI=true." >&2
    fi
  fi
fi
