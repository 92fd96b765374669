#!/usr/bin/env bash
# Create .venv with Python 3.12 and install klqp, both backend plug-ins and the test tools.
# Safe to run again: it reuses .venv and only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for candidate in "${PYTHON:-}" python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 \
                   /usr/local/bin/python3.12 /usr/bin/python3.12; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(find_python) || { echo "klqp needs Python 3.12 (PyMC 6 does not install on 3.11); set PYTHON=/path/to/python3.12" >&2; exit 1; }
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt \
  -e ".[test,docs,examples,parquet]" -e backends/numpyro -e backends/pymc
.venv/bin/python -c "import klqp; print('klqp', klqp.__version__, 'backends:', klqp.backends.available())"
