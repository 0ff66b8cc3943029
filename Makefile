# Development entry points. `make serve` and `make test` are the README's two commands.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel (stored on this project's machines) so pip never pulls a multi-GB CUDA build;
# the container installs the CUDA wheel instead (see Dockerfile).
TORCH_SPEC ?= torch==2.13.0
PORT ?= 8080
GRPC_PORT ?= 8081
PYTEST_ARGS ?= --durations=25  # every run names its slowest tests: the suite has a 15-minute budget

.PHONY: install serve test bench clean

# demo: the demo model's base encoder (make serve); bench: the benchmark's dependencies (make bench).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,demo,bench]"
	touch $@

install: $(VENV)/.installed

serve: install
	$(PY) -m predictor demo --model_name demo --http_port $(PORT) --grpc_port $(GRPC_PORT)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install  # writes bench-results.json and its latency-vs-throughput curves, bench-results.png
	$(PY) -m predictor bench --out bench-results.json

clean:
	rm -rf $(VENV) demo-model .pytest_cache
