# vitcodec — the README's two commands (`make demo`, `make test`) do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo protos clean-venv help

help:
	@echo "make install    create .venv (idempotent) with vitcodec[cloud,dev] + the Fashion-MNIST Debian package"
	@echo "make test       install if needed, then run the whole test suite"
	@echo "make test-fast  the suite without tests marked slow"
	@echo "make demo       install if needed, serve the default model, run the edge client on the samples"
	@echo "make protos     regenerate the gRPC modules from protos/*.proto"

$(STAMP): pyproject.toml
	@if [ "$$(id -u)" = "0" ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "warning: could not install dataset-fashion-mnist"; \
	fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cloud,dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(PY) -m vitcodec.cloud.demo

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I protos --python_out=protos --grpc_python_out=protos protos/*.proto
	$(PY) protos/fix_imports.py

clean-venv:
	rm -rf $(VENV)
