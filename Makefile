# The two commands of the README: `make demo` (the main job) and `make test`. Both set up first.
VENV := .venv
STAMP := $(VENV)/.retool-installed
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: setup demo test test-all docker-image bench check clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

# Until the rollout lands: a stateful session in the jailed Jupyter sandbox, then the attack suite.
demo: $(STAMP)
	$(VENV)/bin/retool sandbox run 'import sympy as sp; n = 2**64 + 1; f = sp.factorint(n); print(f"{n} = {f}"); sum(p * e for p, e in f.items())'
	$(VENV)/bin/retool sandbox check --backend jupyter

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not gpu"

# The Docker backend: an engine (started here if root and none runs) and the offline-built image.
docker-image: $(STAMP)
	bash sandbox/ensure_engine.sh
	bash sandbox/build_offline_image.sh

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/sandbox_bench.py --backend jupyter

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
