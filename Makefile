# mlrun developer targets. `make train` and `make test` work on a fresh machine with Python 3.10+.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0
# Test processes (pytest-xdist): two workers keep two cores busy through the imports, the waits and
# the real processes of the e2e tests. Each file stays on one worker (its module fixtures build once).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: install train test test-fast lint bench clean

install: $(STAMP)

# The venv sees system packages so a torch already installed (e.g. a CUDA build on a GPU node)
# is reused; only when none is importable do we install the pinned CPU wheel.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e ".[all,dev]"
	touch $(STAMP)

train: install
	$(VENV)/bin/mlrun train configs/quickstart.yaml

# Everything: the CLI runs in the test process (tests/cli_runner.py), and in real processes for the
# tests marked e2e (signals, SIGKILL, torchrun, SLURM, start-up checks).
test: install
	$(PYTEST)

# The quick lane while working: everything but the e2e and slow tests.
test-fast: install
	$(PYTEST) -m "not e2e and not slow"

lint: install
	$(VENV)/bin/ruff check mlrun tests scripts
	$(VENV)/bin/ruff format --check mlrun tests scripts

bench: install
	$(PY) scripts/bench/overhead.py
	$(PY) scripts/bench/export.py
	$(PY) scripts/bench/tune.py
	$(PY) scripts/bench/memory.py
	$(PY) scripts/bench/data.py
	$(PY) scripts/bench/compress.py
	$(PY) scripts/bench/compressed_file.py
	$(PY) scripts/bench/scale.py
	$(PY) scripts/bench/optimizers.py
	$(PY) scripts/bench/shards.py

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
