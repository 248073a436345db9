# decom — the two commands a new user runs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DECOM := $(VENV)/bin/decom
DEMO_DIR ?= demo-data
PYTEST_ARGS ?=

.PHONY: help install services demo demo-data demo-steps test lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "decom needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[postgres,mysql,dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install decom with its test tools
	@# decom is installed editable, so pip writes no bytecode for it, and where PYTHONDONTWRITEBYTECODE
	@# is set (as on our CI machines and in many container images) Python never caches it either:
	@# every decom command then compiles its ~40 modules from source (~0.06-0.1 s a command, measured).
	@# Compiled here as pip compiles a wheel's modules; only what changed since is compiled again.
	@$(PY) -m compileall -q decom adapters > /dev/null

services: ## install and start what the tests talk to (PostgreSQL, MariaDB, Debian chromium + chromedriver)
	bash scripts/services.sh
	bash scripts/browser.sh

demo-data: install
	@if [ ! -f $(DEMO_DIR)/legacy.sqlite ]; then \
	  $(DECOM) demo build --out $(DEMO_DIR) --documents 2000; \
	else echo "demo EDM already in $(DEMO_DIR)/ (make clean to rebuild)"; fi
	@# The auditor's key pair (decrypts archives) and the operator's signing key (signs manifests).
	@[ -f $(DEMO_DIR)/keys/auditor.key ] || $(DECOM) keys generate --kind recipient --out $(DEMO_DIR)/keys/auditor
	@[ -f $(DEMO_DIR)/keys/signing.key ] || $(DECOM) keys generate --kind signing --out $(DEMO_DIR)/keys/signing
	@# The demo host app1's keys, ssh_config and known_hosts, which plans/demo.toml names (no root needed).
	@$(PY) scripts/demo_hosts.py prepare --out $(abspath $(DEMO_DIR))/hosts

demo: demo-data ## build the demo legacy EDM and run plans/demo.toml end to end
	@# The throw-away sshd host app1 of the shutdown and final_checks stages (needs root + openssh-server).
	@# Started: every stage runs, and the host is stopped afterwards whatever happened (the exit code is
	@# kept). Skipped (exit 3, one line saying why): only the stages that need no host; the record then
	@# shows shutdown and final checks as not run.
	@rc=0; $(PY) scripts/demo_hosts.py start --out $(abspath $(DEMO_DIR))/hosts || rc=$$?; \
	if [ $$rc -eq 0 ]; then \
	  $(MAKE) --no-print-directory demo-steps; rc=$$?; \
	  $(PY) scripts/demo_hosts.py stop --out $(abspath $(DEMO_DIR))/hosts; exit $$rc; \
	elif [ $$rc -eq 3 ]; then \
	  $(MAKE) --no-print-directory demo-steps \
	    DEMO_STAGES="--stage inventory --stage access_audit --stage backup --stage handover"; \
	else exit $$rc; fi
	$(DECOM) record plans/demo.toml
	$(DECOM) verify-record plans/demo.state/record --signer-key $(DEMO_DIR)/keys/signing.pub
	@echo; echo "Dry-run report: plans/demo.state/reports/plan-report.html (also .md, .json)"; \
	 echo "Inventory:      plans/demo.state/stages/inventory/summary.json"; \
	 echo "Access audit:   plans/demo.state/stages/access_audit/exports/ (users, permissions, findings)"; \
	 echo "Archive:        $(DEMO_DIR)/archives/ (encrypted Parquet + signed manifest; docs/archive-format.md)"; \
	 echo "Handover:       plans/demo.state/stages/handover/ (package/ for the successor, outbox/ notices)"; \
	 if [ -f plans/demo.state/stages/final_checks/checks.json ]; then \
	   echo "Shutdown:       plans/demo.state/journal.jsonl (each action on app1, probed before and after)"; \
	   echo "Final checks:   plans/demo.state/stages/final_checks/ (checks.json, findings.csv)"; \
	   covered="all six stages, with the shutdown actions and the final checks"; \
	 else echo "Shutdown:       not run, nor the final checks (the demo host app1 was skipped, see above)"; \
	   covered="shutdown and final checks listed as not run"; fi; \
	 echo "Record:         plans/demo.state/record/record.html (signed: record.json + record.sig; $$covered)"; \
	 echo "Undo lock-down: .venv/bin/decom undo plans/demo.toml --stage access_audit [--dry-run]"

# What make demo runs on plans/demo.toml, stopping at the first failure; DEMO_STAGES limits plan and run.
DEMO_STAGES ?=
demo-steps:
	$(DECOM) validate plans/demo.toml
	$(DECOM) plan plans/demo.toml $(DEMO_STAGES)
	$(DECOM) run plans/demo.toml $(DEMO_STAGES)
	$(DECOM) status plans/demo.toml
	$(DECOM) verify "$$(ls -d $(DEMO_DIR)/archives/*/ | tail -n 1)" --full \
	  --key-file $(DEMO_DIR)/keys/auditor.key --signer-key $(DEMO_DIR)/keys/signing.pub

test: install services ## install, start the services, run the whole suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check decom adapters tests
	$(VENV)/bin/mypy --strict decom

bench: install services ## benchmarks, by hand (not part of make test): 1M-document inventory
	$(PY) -m benchmarks.inventory_1m

clean: ## remove the venv, demo data and demo state
	@[ ! -f $(DEMO_DIR)/hosts/hosts.json ] || $(PY) scripts/demo_hosts.py stop --out $(abspath $(DEMO_DIR))/hosts
	rm -rf $(VENV) $(DEMO_DIR) plans/*.state .pytest_cache
