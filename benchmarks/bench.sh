#!/usr/bin/env bash
# Every figure of benchmarks/RESULTS.md, from nothing: `make bench` runs this with the environment's python.
#
#   bash benchmarks/bench.sh .venv/bin/python
#
# 1. The Fashion-MNIST networks are trained alone (torch keeps both cores busy).
# 2. Two lanes side by side: the K sweep (fashion_k.py, which leaves about a third of the second core idle) beside
#    the other accuracy benchmarks. Their timings are contended; none of their speed figures is a headline.
# 3. The benchmarks whose figures are times, memory or speed ratios run alone, one after another.
# Each script's wall time is printed after it ("bench: ... took N s"); each lane's output also goes to
# .cache/bench-logs/<lane>.log. Exits non-zero when any script fails, after both lanes have ended.
set -u
PYTHON=${1:?usage: bench.sh PYTHON}
cd "$(dirname "$0")/.."
LOGS=.cache/bench-logs
mkdir -p "$LOGS"

run() {  # run SCRIPT [ARGS...]: one benchmark, timed
    local start=$SECONDS
    echo "$PYTHON benchmarks/$*"
    "$PYTHON" "benchmarks/$@" || { echo "bench: $1 FAILED after $((SECONDS - start)) s"; return 1; }
    echo "bench: $* took $((SECONDS - start)) s"
}

lane() {  # lane NAME "SCRIPT ARGS" ...: the scripts one after another, stopping at the first failure
    local name=$1
    shift
    for step in "$@"; do
        # shellcheck disable=SC2086  # each step is a script and its arguments
        run $step || return 1
    done > >(tee "$LOGS/$name.log" | sed -u "s/^/[$name] /") 2>&1
}

total=$SECONDS
run fashion_nets.py || exit 1

lane sweep "fashion_k.py --write" &
sweep=$!
lane others "fashion_peer.py --write" "per_channel.py --write" "digits_activations.py --write" \
    "fuzz.py --cases 20000 --write" "auto_k.py --write" "digits_report.py --write" &
others=$!
status=0
wait $sweep || status=1
wait $others || status=1
[ $status -eq 0 ] || { echo "bench: a lane failed (see $LOGS/)"; exit 1; }
echo "bench: both lanes done at $((SECONDS - total)) s"

for step in "conversion_cost.py --write" "large_model.py --write" "fit.py --write" "runtime.py --write" \
    "pypi_models.py --write"; do
    # shellcheck disable=SC2086
    run $step || exit 1
done
echo "bench: all done in $((SECONDS - total)) s (installs and the native build not counted)"
