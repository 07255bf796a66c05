#!/usr/bin/env bash
# The device check in one command, in two halves (docs/performance.md, "On a GPU").
#
#   bench/gpu/check.sh download    here, where PyPI is reachable: the wheels that the GPU machine
#                                  lacks (CPython 3.12, x86-64) into .whl/ (ignored by git; the
#                                  device tool carries it), then the one command to run there
#   bench/gpu/check.sh run [ARGS]  there: installs them offline, prints nvidia-smi and the
#                                  torch/CUDA versions, runs python3 -m bench.gpu.check ARGS
#                                  (300 s; --quick: 180 s); the JSON (written after every
#                                  part), this log and the server log's tail go to $OUT
set -euo pipefail
cd "$(dirname "$0")/../.."

WHEELS=${GPU_CHECK_WHEELS:-.whl}
SITE=/tmp/site
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check}
PYTHON=${PYTHON:-python3}
# The whole check's hard limit on the GPU machine (its own budget is 300 s), and the device
# tool's around it: a machine start, a run and a quick rerun fit in its 15 minutes. A longer
# --budget-s (all parts in one call) needs GPU_CHECK_LIMIT_S a little above it.
CHECK_LIMIT_S=${GPU_CHECK_LIMIT_S:-330}
DEVICE_TIMEOUT_S=380

# What the GPU machine (torch 2.11, transformers 5.17, numpy, tokenizers, huggingface_hub,
# prometheus-client, pytest... but no registry) lacks: the server's web packages, and
# FlagEmbedding with what it imports there (datasets, and datasets' dill and multiprocess).
# Each is pure Python or a cp312 manylinux wheel, installed without dependencies.
pinned() { grep -hiE "^$1==" requirements.txt requirements-test.txt | head -1; }
PACKAGES=(
  "$(pinned falcon)" "$(pinned gunicorn)" "$(pinned orjson)" "$(pinned python-dotenv)" "$(pinned swagger-ui-py)"
  "$(pinned FlagEmbedding)" datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
)

download() {
  mkdir -p "$WHEELS"
  rm -f "$WHEELS"/*.whl
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
  ls -1 "$WHEELS"
  local mib
  mib=$(du -sm "$WHEELS" | cut -f1)
  echo "$WHEELS: ${mib} MiB (the working tree and the carried wheels must stay under 64 MiB)"
  cat <<EOF

Now, on the GPU machine, one call of the device tool's run:
  command:   bash bench/gpu/check.sh run
  carry:     ["$WHEELS"]
  timeout_s: $DEVICE_TIMEOUT_S
(bash bench/gpu/check.sh run --quick: the same in about half the time, for a rerun.)
Then copy the returned gpu-check-DATE-GPU.json into bench/results/ and commit it.
EOF
}

run() {
  local out=${OUT:-bench/out}
  mkdir -p "$out" "$WORK"
  {
    ls "$WHEELS"/*.whl >/dev/null || { echo "no wheels in $WHEELS: run bench/gpu/check.sh download first"; exit 1; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    nvidia-smi || echo "nvidia-smi failed"
    "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
      "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' || echo "torch did not import"
    # A path this machine lacks (or a df that fails) is no reason to skip the check.
    df -h /dev/shm /tmp . 2>&1 || echo "df ended with $?"
    PYTHONUNBUFFERED=1 timeout "$CHECK_LIMIT_S" "$PYTHON" -m bench.gpu.check --out "$out" --work "$WORK" "$@" \
      || echo "bench.gpu.check ended with $?"
  } 2>&1 | tee "$out/gpu-check.log"
  if [ -f "$WORK/server.log" ]; then tail -c 400000 "$WORK/server.log" > "$out/server-log-tail.txt"; fi
}

case "${1:-}" in
  download) download ;;
  run) shift; run "$@" ;;
  *) sed -n '2,11p' "$0"; exit 2 ;;
esac
