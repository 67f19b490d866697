# Two commands: `make run` and `make test`. Everything else is a convenience.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= salus-data
DEMO_PATIENTS ?= 100
STAMP := $(VENV)/.installed

.PHONY: run test bench lint install clean definitions

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Set up, load demo data into ./salus-data (SQLite) once, and serve FHIR at http://127.0.0.1:8080/fhir
run: $(STAMP)
	@if [ ! -f $(DATA_DIR)/.demo-loaded ]; then \
		$(BIN)/salus demo --patients $(DEMO_PATIENTS) --data-dir $(DATA_DIR) && touch $(DATA_DIR)/.demo-loaded; \
	fi
	$(BIN)/salus serve --data-dir $(DATA_DIR)

## Set up and run the whole test suite (SQLite and PostgreSQL)
test: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/python -m pytest

## Benchmarks: print figures and write docs/benchmarks.md (never part of make test)
bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get install -y -q wrk >/dev/null 2>&1 || echo "wrk unavailable: HTTP figures will be skipped")
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

## Regenerate src/salus/fhir/definitions/r4.json from the official R4 package
definitions: $(STAMP)
	$(BIN)/python scripts/gen_definitions.py

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache
