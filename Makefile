# The two commands of the README. Both create .venv on first use (CPU torch 2.13.0 here; the same
# pip line installs the CUDA build on a GPU machine) and install salmonn-pl into it.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: demo test test-fast
# The main job on the embedded default, no downloads: the study's padding sweep and text control on
# bundled sample data, for a tiny SALMONN and a tiny Qwen2-Audio, and their side-by-side report.
demo: $(VENV)/.installed
	$(VENV)/bin/salmonn-pl test --config configs/demo.yaml
	$(VENV)/bin/salmonn-pl test --config configs/demo.yaml --config configs/qwen2_audio_tiny.yaml \
		--model.output_dir outputs/demo_qwen2_audio
	$(VENV)/bin/salmonn-pl-eval report --runs '[outputs/demo, outputs/demo_qwen2_audio]' --output outputs/demo_families

# The whole test suite (parity with the official tensors needs ../shared next to the repository),
# with the 15 slowest tests listed at the end.
test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

# The unit tests only (under a minute on 2 CPU cores): everything but the end-to-end runs marked slow.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"
