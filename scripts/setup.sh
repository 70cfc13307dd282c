#!/usr/bin/env bash
# Idempotent setup: a Python >= 3.12 venv in .venv with codexbridge installed; with --test also the
# test extras, the pinned Codex CLI and any other Codex versions asked for (npm, into .tools/).
# Sourced by scripts/run and scripts/test.
#   scripts/setup.sh --test [--codex "VERSIONS"]   (or CODEXBRIDGE_CODEX_VERSIONS="VERSIONS")
# VERSIONS: space- or comma-separated npm versions of @openai/codex, or "pinned", "latest" (the newest on npm,
# looked up at every setup and reinstalled when it moved), "oldest" (the oldest verified with WebSocket mode).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Keep in step with tests/support/codex.py (PINNED, OLDEST). OLDEST: the oldest Codex the parity test passes on
# (README, Fidelity: WebSocket mode exists since 0.116.0, older ones lack what the scenarios check).
CODEX_PINNED="0.169.0"
CODEX_OLDEST="0.166.0"
WANT_TEST=0
CODEX_VERSIONS="${CODEXBRIDGE_CODEX_VERSIONS:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --test) WANT_TEST=1 ;;
    --codex) [ $# -ge 2 ] || { echo "--codex needs a value, e.g. --codex \"pinned latest oldest\"" >&2; exit 2; }
             CODEX_VERSIONS="$2"; shift ;;
    --codex=*) CODEX_VERSIONS="${1#--codex=}" ;;
    *) echo "unknown option: $1 (use --test [--codex VERSIONS])" >&2; exit 2 ;;
  esac
  shift
done

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

# install_codex FOLDER VERSION: @openai/codex@VERSION into .tools/FOLDER unless it is there already.
install_codex() {
  local dir="$ROOT/.tools/$1" version="$2" codex
  codex="$dir/node_modules/.bin/codex"
  if [ -x "$codex" ] && [ "$("$codex" --version 2>/dev/null)" = "codex-cli $version" ]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || { echo "npm is needed to install the Codex CLI for the tests." >&2; exit 1; }
  echo "installing Codex $version into .tools/$1" >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  npm install --silent --no-audit --no-fund --prefix "$dir" "@openai/codex@$version" >/dev/null
  [ "$("$codex" --version 2>/dev/null)" = "codex-cli $version" ] \
    || { echo "Codex $version did not install into .tools/$1" >&2; exit 1; }
}

if [ "$WANT_TEST" = 1 ]; then
  install_codex codex "$CODEX_PINNED"
  for v in ${CODEX_VERSIONS//,/ }; do
    case "$v" in
      pinned|"$CODEX_PINNED") ;;
      oldest) install_codex "codex-$CODEX_OLDEST" "$CODEX_OLDEST" ;;
      latest)
        # the newest on npm now; offline, the one installed before (with a warning)
        newest="$(npm view @openai/codex@latest version 2>/dev/null || true)"
        if [ -z "$newest" ]; then
          if [ -f "$ROOT/.tools/codex-latest/VERSION" ]; then
            echo "warning: could not ask npm for the newest Codex; using $(cat "$ROOT/.tools/codex-latest/VERSION")" >&2
          else
            echo "could not ask npm for the newest Codex" >&2; exit 1
          fi
        else
          install_codex codex-latest "$newest"
          echo "$newest" > "$ROOT/.tools/codex-latest/VERSION"
        fi ;;
      *) install_codex "codex-$v" "$v" ;;
    esac
  done
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
