# Sourced by scripts/test and scripts/demo: make .venv with migrated installed (EXTRAS: pip extras).
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 needs python3-venv for ensurepip.
    rm -rf "$VENV"
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    "$PYTHON" -m venv "$VENV"
  fi
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${EXTRAS:-}"
export PATH="$PWD/$VENV/bin:$PATH"
