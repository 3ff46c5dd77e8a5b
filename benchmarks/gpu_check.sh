#!/usr/bin/env bash
# The GPU check in one command, on a machine with a CUDA GPU:
#
#   bash benchmarks/gpu_check.sh [VENV_DIR] [-- options of gpu_check.py]
#
# 1. checks that nvidia-smi sees a GPU (exits with a message otherwise);
# 2. creates a fresh virtual environment (python3 -m venv) in VENV_DIR, default a new
#    temporary folder (removed at the end unless KEEP_VENV=1); an existing VENV_DIR with
#    torch in it is re-used as it is (set REINSTALL=1 to install again);
# 3. installs a CUDA torch (plain `pip install torch`: the wheel pip picks for this machine,
#    no CPU constraints) and this repository (`pip install -e ".[dev]"` without the
#    constraints file, as `make install RLNB_CONSTRAINTS=none` does); pip reads its index
#    from the usual PIP_INDEX_URL / PIP_FIND_LINKS, for a machine without internet access;
# 4. runs benchmarks/gpu_check.py (sampling tokens/s against transformers.generate, one GRPO
#    step's seconds and peak GPU memory, the bf16-vs-float32 update check) on the
#    Qwen2.5-0.5B-shaped model, under `timeout` (GPU_CHECK_TIMEOUT seconds, default 600).
#
# Expected time: the install 2-5 minutes (CUDA torch is a ~3 GB download), the check 2-4
# minutes on an H100/H200-class GPU. Exit status: that of gpu_check.py (0: every check
# ran and the update ratio is in range; 1: the ratio is out of range, or the script failed;
# 124: timed out), 2 when there is no GPU, 3 when the install fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV=""
if [[ $# -gt 0 && "$1" != "--" ]]; then
    VENV="$1"
    shift
fi
[[ $# -gt 0 && "$1" == "--" ]] && shift
TIMEOUT="${GPU_CHECK_TIMEOUT:-600}"
INSTALL_TIMEOUT="${GPU_CHECK_INSTALL_TIMEOUT:-1200}"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi not found: this machine has no NVIDIA driver, so no CUDA GPU." >&2
    echo "gpu_check: run this on a GPU machine; for a CPU smoke test of the script itself:" >&2
    echo "  python benchmarks/gpu_check.py --device cpu --layers 2 --vocab 2048 --new-tokens 4 --update-steps 2 --sample-prompts 4 --n 2" >&2
    exit 2
fi
if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
    echo "gpu_check: nvidia-smi found no usable GPU (see its message above)." >&2
    exit 2
fi

CLEANUP=""
if [[ -z "$VENV" ]]; then
    VENV="$(mktemp -d "${TMPDIR:-/tmp}/rlnb-gpu-check.XXXXXX")/venv"
    [[ "${KEEP_VENV:-0}" == 1 ]] || CLEANUP="$(dirname "$VENV")"
fi
cleanup() { [[ -n "$CLEANUP" ]] && rm -rf "$CLEANUP"; return 0; }
trap cleanup EXIT

PY="$VENV/bin/python"
if [[ -x "$PY" ]] && "$PY" -c "import torch, rlnb" 2>/dev/null && [[ "${REINSTALL:-0}" != 1 ]]; then
    echo "gpu_check: re-using the environment in $VENV"
else
    echo "gpu_check: creating a virtual environment in $VENV"
    python3 -m venv "$VENV"
    # No constraints file: the CUDA torch must not be replaced by the pinned CPU build.
    unset PIP_CONSTRAINT
    PIP=("$PY" -m pip install --disable-pip-version-check --quiet)
    if ! timeout "$INSTALL_TIMEOUT" "${PIP[@]}" --upgrade pip \
        || ! timeout "$INSTALL_TIMEOUT" "${PIP[@]}" torch \
        || ! (cd "$ROOT" && timeout "$INSTALL_TIMEOUT" "${PIP[@]}" -e ".[dev]"); then
        echo "gpu_check: installing torch or this repository failed (network? see above)." >&2
        exit 3
    fi
fi
if ! "$PY" - <<'PYEOF'
import sys
import torch
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: this torch cannot use the GPU (a CPU build, or a CUDA build newer "
             "than the driver); install a CUDA torch that matches `nvidia-smi`")
PYEOF
then
    exit 2
fi

cd "$ROOT"
set +e
HF_HUB_OFFLINE=1 timeout "$TIMEOUT" "$PY" benchmarks/gpu_check.py "$@"
status=$?
set -e
if [[ $status == 124 ]]; then
    echo "gpu_check: timed out after $TIMEOUT s (GPU_CHECK_TIMEOUT)" >&2
fi
exit $status
