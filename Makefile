# E-Card platform. Two commands on a fresh machine:
#   make demo   install, migrate, seed demo data, run the server (and emulated cards)
#   make test   install, run the static checks (make check), run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQS_HASH := $(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQS_HASH)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo test check install sysdeps lint migrate seed serve bench bench-manufacturer clean

NODE_STAMP := tests/browser/node_modules/.installed

install: sysdeps $(STAMP) $(NODE_STAMP)

sysdeps:
	@bash scripts/sysdeps.sh

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

# axe-core for the browser accessibility checks, pinned by tests/browser/package-lock.json.
$(NODE_STAMP): tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund --ignore-scripts
	touch $@

# Static checks, no tests: lint and format (ruff), types (mypy), import layers (import-linter),
# migrations in step with the models. The same hooks run from .pre-commit-config.yaml.
check: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports  # the import layers of pyproject.toml (docs/ARCHITECTURE.md, "Layers")
	$(PY) manage.py makemigrations --check --dry-run >/dev/null

lint: check

test: install check
	$(PY) -m pytest

migrate: install
	$(PY) manage.py migrate --noinput

seed: migrate
	$(PY) manage.py seed_demo

demo: seed
	HOST=$(HOST) PORT=$(PORT) bash scripts/demo.sh

# Benchmarks write their sections of docs/benchmarks.md. The quick ones run anywhere; the
# database ones want DATABASE_URL pointing at PostgreSQL.
bench: install
	$(PY) bench/bench_scp.py
	$(PY) bench/bench_ota.py

# A manufacturer's file of 10,000 cards imported (acceptance: under 30 s); SQLite, or PostgreSQL
# with DATABASE_URL. Writes its row of the "Manufacturer file import" section (machine noted).
bench-manufacturer: install
	$(PY) bench/bench_manufacturer_import.py --cards 10000 --runs 3

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis

# --- production topology on one machine (docs/deploy.md) -----------------------------------
.PHONY: prod-local prod-local-stop prod-local-status bench-load bench-load-delegated profile-load bench-session
BENCH_AGENTS ?= 1,10,50,200
BENCH_SECONDS ?= 20
PROFILE_AGENTS ?= 50
PROFILE_SECONDS ?= 15
# Optional: BENCH_SERVER=https://127.0.0.1:8440,https://127.0.0.1:8441 (default: every web group that
# prod-local runs, PROD_WEB_URLS; PROD_WEB_GROUPS=2 make prod-local starts two), BENCH_FLAGS=--verify.
BENCH_SERVER ?=

prod-local: install
	bash scripts/prod_local.sh start

prod-local-stop:
	bash scripts/prod_local.sh stop

prod-local-status:
	bash scripts/prod_local.sh status

# Needs `make prod-local` running; seeds load cards once (idempotent), then runs the table and
# writes the "Load" section of docs/benchmarks.md (machine noted).
bench-load: install
	bash scripts/prod_local.sh status >/dev/null || { echo "run make prod-local first" >&2; exit 1; }
	$(PY) bench/bench_load.py --agents $(BENCH_AGENTS) --seconds $(BENCH_SECONDS) $(if $(BENCH_SERVER),--server $(BENCH_SERVER)) $(BENCH_FLAGS)

# Bank stages delegated (issue 17): each session rotates the keys of Load Bank D's SSD through its own
# key service (seed_load --delegated, once), then the non-delegated jobs at BENCH_BASELINE on the same
# machine; writes the "Load, bank stages delegated" section.
BENCH_BASELINE ?= 1,50
bench-load-delegated: install
	bash scripts/prod_local.sh status >/dev/null || { echo "run make prod-local first" >&2; exit 1; }
	$(PY) bench/bench_load.py --delegated --agents $(BENCH_AGENTS) --seconds $(BENCH_SECONDS) --baseline $(BENCH_BASELINE) $(if $(BENCH_SERVER),--server $(BENCH_SERVER)) $(BENCH_FLAGS)

# The web tier's CPU per card session in one process (no prod-local needed): Python calls and SQL
# statements per session (independent of the machine's load) and CPU times; PostgreSQL when
# DATABASE_URL is set (its backend's CPU too), else SQLite. Printed, not written to the docs.
BENCH_SESSIONS ?= 200
bench-session: install
	$(PY) bench/bench_session_cpu.py --sessions $(BENCH_SESSIONS)

# The same load with py-spy on the web workers: writes the "Load profile" section (top frames) and
# speedscope files into var/profile/ (redo it after engine changes).
profile-load: install
	bash scripts/prod_local.sh status >/dev/null || { echo "run make prod-local first" >&2; exit 1; }
	$(PY) bench/bench_load.py --agents $(PROFILE_AGENTS) --seconds $(PROFILE_SECONDS) $(if $(BENCH_SERVER),--server $(BENCH_SERVER)) --profile var/profile $(BENCH_FLAGS)
