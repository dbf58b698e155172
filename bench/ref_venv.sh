#!/usr/bin/env bash
# Build the reference trainers' venv for bench/train_bench.py and bench/gpu_compare.py:
# kohya sd-scripts' pins (its requirements.txt) + the diffusers example's needs (peft, datasets),
# with torch pinned to the version of the project's venv and installed from a local wheel when given.
#
#   bench/ref_venv.sh VENV_DIR KOHYA_CHECKOUT [TORCH_WHEEL_OR_SPEC]
#
# TORCH_WHEEL_OR_SPEC defaults to /opt/wheels/torch-2.13.0+cpu-*.whl when present, else torch==2.13.0.
# PyPI's torchvision is built against CUDA torch; on a CPU torch its C ops cannot load, and the
# references only use torchvision.transforms, so a startup shim skips its op registrations there.
set -euo pipefail
venv=${1:?usage: ref_venv.sh VENV_DIR KOHYA_CHECKOUT [TORCH_WHEEL_OR_SPEC]}
kohya=${2:?usage: ref_venv.sh VENV_DIR KOHYA_CHECKOUT [TORCH_WHEEL_OR_SPEC]}
torch_spec=${3:-}
if [ -z "$torch_spec" ]; then
  torch_spec=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1 || true)
  torch_spec=${torch_spec:-torch==2.13.0}
fi
[ -f "$kohya/requirements.txt" ] || { echo "ref_venv.sh: $kohya/requirements.txt not found (KOHYA_CHECKOUT must be an sd-scripts checkout)" >&2; exit 2; }
python3 -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install -q "$torch_spec"
torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
constraints=$(mktemp)
echo "torch==$torch_version" > "$constraints"
req=$(mktemp)
# bitsandbytes/tensorboard: optional in kohya (8-bit optimizers, logging), unpinned there; not used here
grep -vE '^(-e|bitsandbytes|tensorboard|#|$)' "$kohya/requirements.txt" > "$req"
"$pip" install -q -c "$constraints" -r "$req"
# torchvision of the same release as torch (2.13 -> 0.28), without letting it replace torch
tv_minor=$(( $(echo "$torch_version" | cut -d. -f2) + 15 ))
"$pip" install -q --no-deps "torchvision==0.${tv_minor}.*"
# the diffusers example (v0.32.1, which kohya's diffusers pin satisfies) needs peft and datasets
"$pip" install -q -c "$constraints" peft==0.14.0 datasets==3.2.0
"$pip" install -q -c "$constraints" --no-deps -e "$kohya"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if ! "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
  cat > "$site/_tv_cpu_shim.py" <<'PY'
"""Reference venv only: the CUDA-built torchvision's C ops cannot load on a CPU torch; the
reference trainers use torchvision.transforms only, so its op registrations are skipped."""
import sys
import types

for _n in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules.setdefault(_n, types.ModuleType(_n))
PY
  echo "import _tv_cpu_shim" > "$site/_tv_cpu_shim.pth"
fi
"$venv/bin/python" -c "import torch, torchvision, diffusers, transformers, peft, datasets; from torchvision import transforms; print('reference venv ready: torch', torch.__version__, 'diffusers', diffusers.__version__)"
