# pushsvc — the two commands are `make run` and `make test`; both install what
# they need first and are quick when everything is already in place.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/pushsvc/v1/*.proto)
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
DEB := dist/pushsvc_$(VERSION)_amd64.deb
# What goes into the package: a change to any of these rebuilds it.
DEB_INPUTS := pyproject.toml setup.py $(PROTOS) clients/js/pushsvc.js pushsvc/py.typed \
	$(shell find pushsvc -path pushsvc/v1 -prune -o -type f -name '*.py' -print) \
	$(filter-out pushsvc/static/pushsvc.js,$(wildcard pushsvc/static/*)) \
	$(wildcard systemd/* deploy/env/* deploy/deb/* deploy/nginx/*) \
	docs/operations.md docs/configuration.md
export PATH := $(CURDIR)/.tools/bin:$(HOME)/go/bin:$(PATH)

.PHONY: run test proto lint unit deps tools deb clean

# Start one node on the embedded store, with demo credentials.
run: $(STAMP)
	@$(BIN)/pushsvc serve --dev

test: $(STAMP) tools lint deb
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check pushsvc tests bench setup.py
	$(BIN)/ruff format --check pushsvc tests bench setup.py
	$(BIN)/mypy pushsvc tests

proto: $(STAMP)
	$(BIN)/python setup.py protos

deps: $(STAMP)

$(STAMP): pyproject.toml setup.py $(PROTOS)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# The Debian package (deploy/deb/build.sh), which tests/host/ installs and runs
# under systemd in a booted bookworm container.
deb: $(DEB)

$(DEB): $(STAMP) $(DEB_INPUTS)
	bash deploy/deb/build.sh

# Servers the integration tests run for real (FerretDB for the MongoDB wire).
tools:
	@bash deploy/dev/install-tools.sh

clean:
	rm -rf $(VENV) build dist *.egg-info pushsvc/v1 .tools
