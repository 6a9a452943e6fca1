# The two commands of the README: `make run` and `make test`. Everything else is a helper.
.PHONY: run test lint setup setup-app setup-dev setup-train setup-eval setup-system bench gpu-check

PY := .venv/bin/python
PORT ?= 6006

run: setup-app
	$(PY) -m streamlit run app.py --server.port $(PORT) --browser.serverPort $(PORT)

test: setup-dev setup-train setup-eval setup-system lint
	RECIPE_TEST_STRICT=1 $(PY) -m pytest -q -ra tests

# ruff (lint and format, pyproject.toml) and the layer contracts (import-linter: ui -> backend ->
# pipeline -> core, no import cycles); part of `make test`
lint: setup-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	.venv/bin/lint-imports

setup: setup-app setup-train setup-eval

setup-app:
	@scripts/setup-env.sh app

setup-dev:
	@scripts/setup-env.sh dev

setup-train:
	@scripts/setup-env.sh train

setup-eval:
	@scripts/setup-env.sh eval

setup-system:
	@scripts/install-system-packages.sh

bench: setup-dev
	$(PY) -m bench

# On a GPU machine: the environments with their GPU requirements, then every GPU path end to end on
# tiny models (bench/gpu_check.py). Without a GPU it says so and exits 0. GPU_CHECK_ARGS="--only train".
gpu-check: setup-app setup-train setup-eval
	$(PY) -m bench.gpu_check $(GPU_CHECK_ARGS)
