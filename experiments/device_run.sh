#!/bin/bash
# The accelerator check on a lent device machine, in one call (experiments/README.md):
#
#   run: bash experiments/device_run.sh          timeout_s: 560
#
# The device image has JAX, Flax, Optax, Orbax, chex, scikit-learn/-image, tqdm and matplotlib;
# the check reads only bundled data, so it needs nothing else (Grain and TFDS are imported by the
# tfds: paths only). Wheels carried in .whl/ (carry: [".whl"]) are installed first, for a
# package the image lacks. Results go to $OUT: device_<gpu>.json and .md (rewritten after every
# section, so a run cut short keeps what it measured), the log and nvidia-smi's line.
set -o pipefail
out="${OUT:-experiments/results}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_run: installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
export PYTHONPATH="$PWD:$PYTHONPATH" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$out/nvidia_smi.txt"
python3 experiments/device_check.py --out "$out" "$@" 2>&1 | tee "$out/device_check.log"
