#!/usr/bin/env bash
# Build (idempotently) a venv with AUTOMATIC1111 1.10's own pins and the real `ldm` package, so the
# WebUI adapter is tested against what the WebUI ships: no diffusers, no peft, transformers 4.30.
# usage: bash tools/setup_a1111_env.sh VENV      (a no-op when the stamp matches; ~3 min from nothing)
set -euo pipefail
VENV=${1:?usage: setup_a1111_env.sh VENV}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=$VENV/bin/python

# A1111 1.10.1 requirements_versions.txt (the subset the model code and our engine import) +
# torch 2.14.1/torchvision 0.29.1 from the machine's local wheels (PyPI's torchvision does not
# import beside a different torch; ldm imports torchvision). setuptools 80.9 still ships pkg_resources,
# which pytorch_lightning 1.9 imports (A1111 pins 69.5.1; torch 2.14 needs >= 77).
PINS=(torch==2.14.1 torchvision==0.29.1 gradio==3.41.2 transformers==4.30.2 accelerate==0.21.0
      safetensors==0.4.2 pytorch_lightning==1.9.4 open-clip-torch==2.20.0 omegaconf==2.2.3
      einops==0.4.1 numpy==1.26.2 Pillow==9.5.0 kornia==0.6.7 fastapi==0.94.0 httpx==0.24.1
      setuptools==80.9.0 scipy PyYAML pytest)
SDKIT=stable-diffusion-sdkit==2.1.5
STAMP=$VENV/.stamp-a1111-$(printf '%s\n' "${PINS[@]}" "$SDKIT" | sha1sum | cut -c1-10)
[ -f "$STAMP" ] && exit 0

PYBIN=$(command -v python3.11 || command -v python3)
[ -x "$PY" ] || "$PYBIN" -m venv "$VENV"
CONS=$(mktemp); trap 'rm -f "$CONS"' EXIT
# every pin is also a constraint, so no dependency can move torch (which would pull CUDA wheels)
printf '%s\n' "${PINS[@]}" | grep '==' > "$CONS"
echo "setup_a1111_env: installing A1111 pins into $VENV (a few minutes the first time)"
PIP_CONSTRAINT="$CONS" "$PY" -m pip install -q --disable-pip-version-check "${PINS[@]}"
# the real ldm package; its own pins are ancient, so no dependencies
PIP_CONSTRAINT="$CONS" "$PY" -m pip install -q --disable-pip-version-check --no-deps "$SDKIT"
# the project itself, no deps (its core needs only what is above)
"$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$HERE/.." \
  || echo "$(cd "$HERE/.." && pwd)" > "$("$PY" -c 'import site; print(site.getsitepackages()[0])')/lora_trainer_src.pth"
"$PY" - <<'PY'
import importlib.util as u, torch, transformers, gradio
assert torch.__version__.startswith("2.14.1"), torch.__version__
assert transformers.__version__ == "4.30.2", transformers.__version__
assert gradio.__version__ == "3.41.2", gradio.__version__
for banned in ("diffusers", "peft"):
    assert u.find_spec(banned) is None, f"{banned} must not be in the A1111 venv"
import ldm.models.diffusion.ddpm  # noqa: F401  (the real LatentDiffusion)
print("setup_a1111_env: ok torch", torch.__version__, "transformers", transformers.__version__)
PY
rm -f "$VENV"/.stamp-a1111-*; touch "$STAMP"
