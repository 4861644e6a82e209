#!/usr/bin/env bash
# One command for a fresh machine: creates .venv and installs the pinned stack plus petals-ops (editable,
# with dev tools). Re-running it is safe. Usage: ./install.sh [--system]
#   --system  also installs the Debian packages the tests use (openssh-server, docker.io, prometheus, chromium); needs root.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${PETALS_OPS_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "--system" ]]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends openssh-server openssh-client docker.io prometheus chromium >/dev/null
fi

[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# Everything except petals, pinned by constraints.txt.
grep -v -E '^\s*(#|$)|^petals==' constraints.txt > "$VENV/requirements.lock"
"${PIP[@]}" -r "$VENV/requirements.lock"
# petals' own metadata pins an uninstallable hivemind and pydantic<2: install it without dependencies.
"${PIP[@]}" --no-deps "$(grep -E '^petals==' constraints.txt)"
"${PIP[@]}" -c "$VENV/requirements.lock" -e '.[dev]'
echo "installed: $VENV/bin/petals-ops" >&2
