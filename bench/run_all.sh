#!/bin/sh
# Run every benchmark in bench/, one after the other; exit 1 if any missed a target.
# PYTHON is the interpreter of the environment the project is installed in
# (the benchmarks run the commands installed beside it), default: python3 on PATH.
#   PYTHON=/tmp/venv/bin/python bench/run_all.sh
set -u
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python3}
failed=""
for name in eventd_ingest catchup_50k hook_latency delivery_throughput delivery_latency watcher_decide \
    reconcile_detect reconcile_fix; do
    echo "--- $PYTHON bench/$name.py"
    "$PYTHON" "bench/$name.py" || failed="$failed $name"
done
echo
if [ -n "$failed" ]; then
    echo "benchmarks that missed a target:$failed"
    exit 1
fi
echo "all benchmarks met their targets"
