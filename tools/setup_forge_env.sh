#!/usr/bin/env bash
# Build (idempotently) a venv with SD WebUI Forge's own pins (gradio 4.40.0, transformers 4.46.1,
# accelerate 0.31.0, diffusers 0.31.0, peft 0.13.2), so the UI and the engine are tested on what Forge
# ships, not only on the newest releases in .venv.
# usage: bash tools/setup_forge_env.sh VENV      (a no-op when the stamp matches; a few minutes from nothing)
set -euo pipefail
VENV=${1:?usage: setup_forge_env.sh VENV}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=$VENV/bin/python

# Forge's requirements_versions.txt (2025; the subset our UI and engine import) + torch 2.13.0 from the
# machine's local CPU wheel (an unpinned torch would pull CUDA wheels). fastapi/httpx/pydantic/
# huggingface-hub are pinned as Forge pins them: gradio 4.40 breaks with newer pydantic/fastapi.
# Forge runs Python 3.10; the local torch wheel is cp311, so 3.11 here (gradio/transformers are pure Python).
PINS=(torch==2.13.0 gradio==4.40.0 transformers==4.46.1 accelerate==0.31.0 diffusers==0.31.0 peft==0.13.2
      safetensors==0.4.2 numpy==1.26.2 Pillow==9.5.0 tqdm==4.66.1 fastapi==0.104.1 httpx==0.24.1
      pydantic==2.8.2 huggingface-hub==0.26.2
      PyYAML==6.0.3 pytest==9.2.0 pytest-timeout==2.4.0 playwright==1.65.2)
OPTIONAL=(onnxruntime)  # WD14 captioner; not a Forge pin, installed if a wheel fits the pins above
STAMP=$VENV/.stamp-forge-$(printf '%s\n' "${PINS[@]}" "${OPTIONAL[@]}" | sha1sum | cut -c1-10)
[ -f "$STAMP" ] && exit 0

PYBIN=$(command -v python3.11 || command -v python3)
[ -x "$PY" ] || "$PYBIN" -m venv "$VENV"
CONS=$(mktemp); trap 'rm -f "$CONS"' EXIT
# every pin is also a constraint, so no dependency can move torch (CUDA wheels) or gradio
printf '%s\n' "${PINS[@]}" | grep '==' > "$CONS"
echo "setup_forge_env: installing Forge pins into $VENV (a few minutes the first time)"
PIP_CONSTRAINT="$CONS" "$PY" -m pip install -q --disable-pip-version-check "${PINS[@]}"
PIP_CONSTRAINT="$CONS" "$PY" -m pip install -q --disable-pip-version-check "${OPTIONAL[@]}" \
  || echo "setup_forge_env: ${OPTIONAL[*]} not installed (no wheel fits Forge's pins); its tests skip"
# the project itself, no deps (everything it needs is above)
"$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$HERE/.." \
  || echo "$(cd "$HERE/.." && pwd)" > "$("$PY" -c 'import site; print(site.getsitepackages()[0])')/lora_trainer_src.pth"
"$PY" - <<'PY'
import accelerate, diffusers, gradio, peft, torch, transformers
want = {"gradio": (gradio, "4.40.0"), "transformers": (transformers, "4.46.1"),
        "accelerate": (accelerate, "0.31.0"), "diffusers": (diffusers, "0.31.0"), "peft": (peft, "0.13.2")}
for name, (mod, version) in want.items():
    assert mod.__version__ == version, f"{name} {mod.__version__} != {version}"
assert torch.__version__.startswith("2.13.0"), torch.__version__
import lora_trainer  # noqa: F401
print("setup_forge_env: ok torch", torch.__version__, "gradio", gradio.__version__,
      "transformers", transformers.__version__, "diffusers", diffusers.__version__)
PY
rm -f "$VENV"/.stamp-forge-*; touch "$STAMP"
