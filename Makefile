# E-Card platform. Two commands on a fresh machine:
#   make demo   install, migrate, seed demo data, run the server (and emulated cards)
#   make test   install, lint, run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQS_HASH := $(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQS_HASH)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo test install sysdeps lint migrate seed serve bench clean

install: sysdeps $(STAMP)

sysdeps:
	@bash scripts/sysdeps.sh

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest

migrate: install
	$(PY) manage.py migrate --noinput

seed: migrate
	$(PY) manage.py seed_demo

demo: seed
	HOST=$(HOST) PORT=$(PORT) bash scripts/demo.sh

bench: install
	$(PY) bench/bench_scp.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
