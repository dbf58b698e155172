# Quick start: `make demo` then `make test`. Everything installs itself into .venv (Python 3.11).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-$(shell cat requirements/dev.txt requirements/dev-nodeps.txt pyproject.toml | sha1sum | cut -c1-10)
A1111_VENV := .venv-a1111
PYTEST_ARGS ?=

.PHONY: venv demo test test-main test-a1111 test-forge lint bench bench-download bench-gpu-prepare bench-gpu app docs clean

venv: $(STAMP)
$(STAMP): requirements/dev.txt requirements/dev-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -r requirements/dev-nodeps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.stamp-*; touch $@

demo: venv
	$(PY) -m lora_trainer.demo

lint: venv
	$(VENV)/bin/ruff check lora_trainer tests bench scripts tools install.py preload.py
	$(PY) -m pytest -q -p no:cacheprovider tests/test_layers.py tests/data/test_config_seam.py

test: venv lint test-main test-a1111 test-forge

test-main: venv
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests --ignore=tests/a1111

# The WebUI adapter on A1111's own pins (gradio 3.41.2, transformers 4.30.2, no diffusers) and real `ldm`.
test-a1111:
	@if [ -d tests/a1111 ]; then bash tools/setup_a1111_env.sh $(A1111_VENV) && \
	  $(A1111_VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests/a1111; \
	else echo "no A1111 tests"; fi
	# the browser flows with the app on A1111's gradio 3.41.2 (Playwright drives it from .venv)
	LT_APP_PYTHON=$(CURDIR)/$(A1111_VENV)/bin/python LT_UI_ARTIFACTS=artifacts/a1111 $(PY) -m pytest -q \
	  -p no:cacheprovider $(PYTEST_ARGS) tests/ui/test_trainer_flow.py tests/ui/test_downloader_browser.py

# The UI on Forge's gradio 4.40 and the engine on its diffusers 0.31 / transformers 4.46.
test-forge:
	bash tools/setup_forge_env.sh .venv-forge && LT_UI_ARTIFACTS=artifacts/forge .venv-forge/bin/python -m pytest -q \
	  -p no:cacheprovider $(PYTEST_ARGS) tests/ui tests/models tests/lora tests/train/test_train_loop.py \
	  tests/train/test_train_noise_optim.py tests/train/test_train_cli.py

bench: venv
	$(PY) bench/train_bench.py

bench-download: venv
	$(PY) bench/download_bench.py

# here: kohya's sources + wheels into .carry (KOHYA_SD_SCRIPTS=<sd-scripts checkout>); on the GPU machine,
# with .carry carried along: `make bench-gpu PY=python3` (the image's torch; one call, under 8 minutes)
bench-gpu-prepare: venv
	$(PY) bench/gpu_compare.py --prepare .carry --kohya "$(KOHYA_SD_SCRIPTS)"

bench-gpu:
	PYTHONUNBUFFERED=1 $(PY) bench/gpu_compare.py --carry .carry

app: venv
	$(PY) -m lora_trainer app

docs: venv
	$(PY) tools/sync_docs.py

clean:
	rm -rf $(VENV) $(A1111_VENV) .venv-forge output .pytest_cache .ruff_cache
