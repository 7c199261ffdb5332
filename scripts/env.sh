#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv, or $HAMSWEEP_VENV) with the pinned
# versions of constraints.txt. Idempotent: it does nothing when pyproject.toml and
# constraints.txt are unchanged since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${HAMSWEEP_VENV:-.venv}
python=${PYTHON:-python3}
stamp="$venv/.hamsweep-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/hamsweep" ]; then
  exit 0
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "error: hamsweep needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 2; }
echo "setting up $venv (first run: a few minutes, torch is large)..." >&2
"$python" -m venv "$venv"
log="$venv/install.log"  # pip's full output; shown only when the install fails
if ! { "$venv/bin/python" -m pip install --upgrade pip &&
       "$venv/bin/python" -m pip install -c constraints.txt -e ".[test]"; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "error: installing into $venv failed; the whole pip log is $log" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "$venv is ready" >&2
