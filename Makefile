# The two commands of the README: `make demo` (the main job) and `make test`. Both set up first.
VENV := .venv
STAMP := $(VENV)/.retool-installed
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: setup demo test test-all docker-image bench check clean embedded-adapter peer-chat-model

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

# The main job: a tool-integrated solve of a sample problem by the embedded model (SmolLM2-135M with
# retool's tool-integrated adapter), in the sandbox.
demo: $(STAMP)
	$(VENV)/bin/retool solve "What is the remainder when 2 to the power 100 is divided by 97?"

# Rebuild the embedded adapter from the recipes (SFT, probe, RL, evaluations; ~90 min on 2 CPU cores).
embedded-adapter: $(STAMP)
	$(VENV)/bin/python -m retool.training.embedded

# Build the peer benchmark's model (a chat-dialect LoRA, into the cache; `retool bench peer` builds it on first use).
peer-chat-model: $(STAMP)
	$(VENV)/bin/python -m retool.training.peer_chat_model

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
	$(VENV)/bin/python benchmarks/rollout_bench.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
