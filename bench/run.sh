#!/usr/bin/env bash
# The benchmark's one command: bash bench/run.sh [--quick] [other options of python -m bench.run]
set -euo pipefail
cd "$(dirname "$0")/.."
# The partitioned topology needs the consistent-hash exchange (as .ci/run enables it for the tests).
if command -v rabbitmq-plugins >/dev/null 2>&1; then
    rabbitmq-plugins -q enable rabbitmq_consistent_hash_exchange >/dev/null 2>&1 || true
fi
# The locked test and bench dependencies (requirements/bench.txt includes requirements/test.txt's pins).
bash scripts/install-venv requirements/bench.txt
for arg in "$@"; do
    if [ "$arg" = "--trace" ]; then
        # sitecustomize.py in bench/trace is imported by every Python process started from here on.
        export BENCH_TRACE_DIR="$PWD/bench/results/trace" PYTHONPATH="$PWD/bench/trace${PYTHONPATH:+:$PYTHONPATH}"
        rm -rf "$BENCH_TRACE_DIR" && mkdir -p "$BENCH_TRACE_DIR"
    fi
done
exec .venv/bin/python -m bench.run "$@"
