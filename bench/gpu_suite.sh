#!/usr/bin/env bash
# Every GPU check in one command, for a lent H100/H200 (see bench/gpu_suite.py and README "GPU suite").
# The device machine has torch, triton and pytest but no registry: the package is installed from this
# checkout without dependencies or build isolation, and whatever else is missing is skipped with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
install=("$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .)
if ! "$PY" -c "import histream_engine" 2>/dev/null; then
    if [[ " $* " == *" --dry-run "* ]]; then
        echo "first: ${install[*]}"
    else
        "${install[@]}"
    fi
fi
exec "$PY" -m bench.gpu_suite "$@"
