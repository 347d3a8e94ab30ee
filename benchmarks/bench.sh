#!/usr/bin/env bash
# Every figure of benchmarks/RESULTS.md, from nothing: `make bench` runs this with the environment's python.
#
#   bash benchmarks/bench.sh .venv/bin/python
#
# The scripts run one after another, each alone on the machine: torch, onnxruntime and the fitter's workers each
# keep both cores busy, and side by side their spinning thread pools only slowed each other down (tried: two lanes
# of scripts took as long as one, with 40% of the processor time in the kernel). Each script's wall time is
# printed after it ("bench: ... took N s"), the total at the end, for benchmarks/RESULTS.md's intro.
set -u
PYTHON=${1:?usage: bench.sh PYTHON}
cd "$(dirname "$0")/.."

total=$SECONDS
for step in "fashion_nets.py" "fashion_k.py --write" "per_channel.py --write" "fashion_peer.py --write" "latency_budget.py --write" \
    "conversion_cost.py --write" "conversion_speed.py --write" "large_model.py --write" "digits_activations.py --write" "fit.py --write" \
    "auto_k.py --write" "digits_report.py --write" "fuzz.py --cases 20000 --write" "graph_fuzz.py --cases 400 --write" \
    "graph_fuzz.py --cases 200 --grammar blocks --write" "runtime.py --write" "channel_axis_runtime.py --write" \
    "pypi_models.py --write" "silero_vad.py --write" "ray_cluster.py --write" "compensation_cost.py --write" "compensation_cost.py --chains 2 --write" \
    "pypi_models.py --bias-correction --write" "pypi_models.py --reconstruct --write" \
    "pypi_models.py --sequential --bias-correction --write" "reservoir_draws.py --seeds 0,1,2,3 --write" \
    "bias_correction.py --nets vgg:3,4 resnet:3,4 effnet:6,8 gelu:5,6 --write" \
    "sequential.py --nets vgg:3,4 resnet:3,4 effnet:6,8,10 gelu:5,6 --write" \
    "sequential.py --nets vgg:3,4 resnet:3,4 --spike-penalty 0.01 --write" \
    "reconstruct.py --nets vgg:3,4 resnet:3,4 effnet:6,8,10 gelu:5,6 --write" \
    "reconstruct.py --nets vgg:3,4 resnet:3,4 --spike-penalty 0.01 --write" \
    "fit_spread.py --nets vgg:4 resnet:4 effnet:6 gelu:5 --seeds 5 --write" \
    "fit_spread.py --nets vgg:4 resnet:4 effnet:6 gelu:5 --seeds 5 --range-weight 0.001 --write" \
    "fit_spread.py --nets vgg:4 resnet:4 effnet:6 gelu:5 --seeds 5 --range-weight 0 --write" \
    "fit_spread.py --nets effnet:10 --seeds 5 --range-weight 0 --kicks 6 60 200 --modes per-channel --write" \
    "fit_spread.py --nets effnet:6 gelu:5 --seeds 5 --range-weight 0 --channel-kicks 0 60 --modes per-channel+sequential --write" \
    "fit_spread.py --nets effnet:10 --seeds 5 --range-weight 0 --kicks 60 --channel-kicks 0 60 --modes per-channel --write" \
    "fit_spread.py --nets effnet:6 --seeds 5 --range-weight 0 --spike-penalty 0.001 --channel-kicks 60 --modes per-channel+sequential --write" \
    "fit_spread.py --nets vgg:4 resnet:4 --seeds 5 --range-weight 0.001 --spike-penalty 0.02 --modes one-gate+sequential per-channel+sequential --write" \
    "fit_spread.py --nets vgg:L24 resnet:L48 effnet:L90 --seeds 5 --modes one-gate --write" \
    "fit_spread.py --nets effnet:L90 --seeds 5 --range-weight 0.001 --channel-kicks 60 --modes per-channel+sequential --write" \
    "fit_spread.py --nets effnet:L90 vgg:L24 resnet:L48 --seeds 3 --modes one-gate --chains 1 2 --write" \
    "fit_spread.py --nets effnet:L90 vgg:L24 resnet:L48 --seeds 3 --modes one-gate --chains 2 --spike-penalty 0.002 --write" \
    "fit_spread.py --nets effnet:5 gelu:4 vgg:3 resnet:3 effnet:10 --seeds 3 --modes one-gate --chains 1 2 --write" \
    "fit_spread.py --nets effnet:6 effnet:5 --seeds 3 --modes one-gate --chains 2 --spike-penalty 0.002 --write" \
    "fit_spread.py --nets vgg:4 resnet:4 --seeds 3 --modes one-gate --chains 2 --spike-penalty 0.01 --write" \
    "fit_spread.py --nets vgg:4 resnet:4 --seeds 3 --modes one-gate --chains 2 --spike-penalty 0.03 --write" \
    "latency_budget.py --nets effnet --modes reconstructed --chains 2 --spike-penalty 0.002 --write" \
    "range_weight.py --part fashion --nets vgg:4 resnet:4 effnet:6 gelu:5 --seeds 2 --write" \
    "range_weight.py --part pypi --write" "pypi_sweep.py --write" "pypi_sweep.py --ks default --chains 2 --seeds 3 --write" "stability.py --write" "captcha_ocr.py --write" \
    "nudenet_calibration.py --write"; do
    start=$SECONDS
    echo "$PYTHON benchmarks/$step"
    # shellcheck disable=SC2086  # each step is a script and its arguments
    "$PYTHON" benchmarks/$step || { echo "bench: $step FAILED after $((SECONDS - start)) s"; exit 1; }
    echo "bench: $step took $((SECONDS - start)) s"
done
echo "bench: all done in $((SECONDS - total)) s (installs and the native build not counted)"
