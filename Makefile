# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
BUDGET ?= 4
CRITERION ?= math

.PHONY: install demo test lint bench

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

# The main job. No trained demo model ships yet, so it runs on a random 12-layer Qwen2-VL
# generated here (out/tiny_vlm): the whole pipeline, calibration to results table, offline.
demo: install
	mkdir -p out
	$(OFFLINE) $(PY) -m lmms_prune_plugin.tiny qwen2_vl out/tiny_vlm --layers 12 > out/tiny_vlm.args
	$(OFFLINE) $(VENV)/bin/lmms-eval --model pruned_vlm \
		--model_args $$(cat out/tiny_vlm.args),criterion=$(CRITERION),budget=$(BUDGET),calib_limit=32 \
		--tasks prune_demo --include_path $$($(PY) -c 'import lmms_prune_plugin as p; print(p.TASKS_DIR)') \
		--batch_size 8 --limit 64 --output_path out/demo

test: install
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(OFFLINE) $(PY) -m benchmarks.run
