# pushsvc — the two commands are `make run` and `make test`; both install what
# they need first and are quick when everything is already in place.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
PROTOS := $(wildcard protos/pushsvc/v1/*.proto)
CLIENT_PY := clients/python
VERSION := $(shell cat VERSION)
DEB := dist/pushsvc_$(VERSION)_amd64.deb
# What goes into the package: a change to any of these rebuilds it.
DEB_INPUTS := pyproject.toml setup.py VERSION $(PROTOS) clients/js/pushsvc.js pushsvc/py.typed \
	$(shell find pushsvc $(CLIENT_PY)/pushsvc_client -path '*/v1' -prune -o -type f -name '*.py' -print) \
	$(CLIENT_PY)/pyproject.toml $(CLIENT_PY)/setup.py \
	$(filter-out pushsvc/static/pushsvc.js,$(wildcard pushsvc/static/* pushsvc/static/admin/*)) \
	$(wildcard systemd/* deploy/env/* deploy/deb/* deploy/nginx/*) \
	docs/operations.md docs/configuration.md
export PATH := $(CURDIR)/.tools/bin:$(HOME)/go/bin:$(PATH)

.PHONY: run test proto lint unit deps tools deb clean bench

# Start one node on the embedded store, with demo credentials. Installs what
# running needs only: no test tools.
run: $(RUN_STAMP)
	@$(BIN)/pushsvc serve --dev

test: $(STAMP) tools lint deb
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check pushsvc tests bench setup.py $(CLIENT_PY)/setup.py $(CLIENT_PY)/pushsvc_client
	$(BIN)/ruff format --check pushsvc tests bench setup.py $(CLIENT_PY)/setup.py $(CLIENT_PY)/pushsvc_client
	$(BIN)/mypy pushsvc tests bench $(CLIENT_PY)/pushsvc_client

# Regenerate pushsvc_client.v1 (clients/python) after a change to protos/.
proto: $(STAMP)
	$(BIN)/pip install -q --no-deps -e $(CLIENT_PY)

deps: $(STAMP)

# What running needs, and the WebSocket client the README tries a node with (the
# demo extra). pushsvc-client first: the server depends on it, and it is not on
# an index.
$(RUN_STAMP): pyproject.toml setup.py $(PROTOS) $(CLIENT_PY)/pyproject.toml $(CLIENT_PY)/setup.py
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '$(CLIENT_PY)[health]'
	$(BIN)/pip install -q -e '.[demo]'
	@touch $@

# Everything: the test, lint and type-check tools on top.
$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# pushsvc against its peers (bench/README.md), e.g. make bench ARGS='--quick --record'.
bench: $(STAMP)
	$(BIN)/python -m bench.suite $(ARGS)

# The Debian package (deploy/deb/build.sh), which tests/host/ installs and runs
# under systemd in a booted bookworm container.
deb: $(DEB)

$(DEB): $(STAMP) $(DEB_INPUTS)
	bash deploy/deb/build.sh

# Servers the integration tests run for real (FerretDB for the MongoDB wire).
tools:
	@bash deploy/dev/install-tools.sh

# FerretDB alone (into .tools/bin), for a fleet on this machine; `make tools`
# installs it too, with everything else the tests run.
.PHONY: ferretdb
ferretdb:
	@bash deploy/dev/install-ferretdb.sh

clean:
	rm -rf $(VENV) build dist *.egg-info pushsvc/v1 .tools \
	  $(CLIENT_PY)/build $(CLIENT_PY)/*.egg-info $(CLIENT_PY)/pushsvc_client/v1
