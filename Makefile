# ModelSet: `make all` builds ModelSet500 on Fashion-MNIST, trains LPS, runs the benchmarks and
# renders the leaderboard; `make test` runs the tests. Each target installs what it needs first.

CONFIG   ?= configs/modelset500.yaml
MODELSET ?= data/modelset500
RESULTS  ?= results
LPS_DIR  ?= $(RESULTS)/lps
THREADS  ?=
DIST     ?= dist
VENV     ?= .venv
PY       := $(VENV)/bin/python
SYSPY    ?= python3
FMNIST   := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP    := $(VENV)/.installed
# CPU threads of the LPS and benchmark commands (empty: every core); a build's come from its config.
RUNTIME  := $(if $(THREADS),--threads $(THREADS))

export PYTHONPATH := $(CURDIR)

.PHONY: setup modelset variants lps bench leaderboard dist all test lint clean

setup: $(STAMP) $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

$(STAMP): pyproject.toml
	[ -x $(PY) ] || $(SYSPY) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

modelset: setup
	$(PY) -m builders build --config $(CONFIG) --zoo $(MODELSET)
	@echo "model set written to $(MODELSET)"

variants: setup
	$(PY) -m builders variants tables --zoo $(MODELSET) --out $(RESULTS)/variants
	@echo "variant tables written to $(RESULTS)/variants"

# LPS for every task fold (checkpoints in LPS_DIR, reused by `make bench`), scored by the benchmark
# tracks beside the weight-only baseline and the controls; plus one LPS on every model for search
# and the zoo index that search reads (the set's embeddings under that LPS).
LPS_METHODS := lps lps_contrastive flat_cosine random oracle shape_only recipe_only

lps: setup
	$(PY) -m benchmarks run --zoo $(MODELSET) --results $(RESULTS)/runs --cache $(LPS_DIR) --methods $(LPS_METHODS) $(RUNTIME)
	$(PY) -m benchmarks leaderboard --results $(RESULTS)/runs --out $(LPS_DIR) --methods $(LPS_METHODS)
	$(PY) -m lps train --zoo $(MODELSET) --out $(LPS_DIR) --folds --all-tasks $(RUNTIME)
	$(PY) -m lps index --zoo $(MODELSET) --lps $(LPS_DIR)/search $(RUNTIME)
	$(PY) -m lps calibrate --zoo $(MODELSET) --out $(LPS_DIR) $(RUNTIME)
	@echo "LPS checkpoints and their scores written to $(LPS_DIR) (leaderboard.md)"

bench: setup
	$(PY) -m benchmarks run --zoo $(MODELSET) --results $(RESULTS)/runs --cache $(LPS_DIR) $(RUNTIME)
	@echo "benchmark results written to $(RESULTS)/runs"

leaderboard: setup
	$(PY) -m benchmarks leaderboard --results $(RESULTS)/runs --out $(RESULTS)
	@echo "leaderboard written to $(RESULTS)/leaderboard.{csv,md,html}"

dist: setup
	$(PY) -m modelset pack --zoo $(MODELSET) --out $(DIST)
	@echo "release written to $(DIST)"

all: setup
	$(MAKE) modelset CONFIG=$(CONFIG) MODELSET=$(MODELSET)
	$(MAKE) variants MODELSET=$(MODELSET)
	$(MAKE) lps MODELSET=$(MODELSET)
	$(MAKE) bench MODELSET=$(MODELSET)
	$(MAKE) leaderboard MODELSET=$(MODELSET)

test: setup
	$(PY) -m pytest -q -ra

lint: setup
	$(PY) -m ruff check modelset builders lps benchmarks tests scripts

clean:
	rm -rf $(RESULTS) $(DIST) data/mini
