# Two commands for a new user: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test install tools lint format bench up down clean screenshots lock image

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

# checkov pins its own dependencies: it gets a virtualenv of its own.
TOOLS  := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed-stamp

$(TOOLS_STAMP):
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet 'checkov>=3.2,<4'
	touch $(TOOLS_STAMP)

install: $(STAMP)

tools: $(TOOLS_STAMP)

## make run: install, start the local stack, run the flights pipeline, serve the apps until Ctrl-C
run: install
	$(BIN)/riverlake up
	$(BIN)/riverlake run flights --cluster local
	$(BIN)/riverlake serve --with-cluster

## make test: the whole test suite (unit, integration against the real local stack)
test: install tools
	$(BIN)/python -m pytest

## make screenshots: the browser tests, writing the README's pictures to docs/screenshots/
screenshots: install
	RIVERLAKE_SCREENSHOTS=1 $(BIN)/python -m pytest tests/browser/test_apps.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## make bench: every benchmark (writes benchmarks/results/*.json), then the README's table from them
bench: install
	$(BIN)/python benchmarks/etl.py
	$(BIN)/python benchmarks/etl.py --rows 60000000 --files 1000 \
		--engines riverlake,duckdb_stream,riverlake_distributed_1,riverlake_distributed_2 --name etl-60m
	$(BIN)/python benchmarks/transform.py
	$(BIN)/python benchmarks/transform.py --rows 60000000 --files 1000 --name transform-60m
	$(BIN)/python benchmarks/apps.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/incremental.py
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/readme.py

up: install
	$(BIN)/riverlake up

down: install
	$(BIN)/riverlake down

## make image: build the production image with podman (a local Debian base where no
## registry is reachable); prints its size and build time
image:
	$(PYTHON) deploy/containers/build.py

# The image's exact Python packages (versions and hashes) from pyproject's ranges, for
# Linux x86_64 and Python 3.11 (the image's); a deploy test checks it against pyproject.
lock: install
	.venv/bin/uv pip compile pyproject.toml --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements.lock

clean:
	-$(BIN)/riverlake down
	rm -rf .riverlake
