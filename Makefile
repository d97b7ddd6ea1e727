# Two commands on a fresh machine: `make run` (service + students on SQLite) and `make test`.
# Both install what they need first: a virtualenv in .venv with the CPU build of torch.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps run serve test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build first: an unpinned torch would pull gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use: PostgreSQL 15 (a real server) and Chromium (the dashboard test).
system-deps:
	@command -v initdb >/dev/null && command -v chromium >/dev/null || { \
	  apt-get update -qq && apt-get install -y -qq postgresql-15 chromium >/dev/null; }
	@command -v initdb >/dev/null || ln -sf /usr/lib/postgresql/15/bin/initdb /usr/lib/postgresql/15/bin/pg_ctl /usr/lib/postgresql/15/bin/postgres /usr/local/bin/

# Options go through ARGS, e.g. `make run ARGS="--students 4 --port 8001"` (see `acl-run --help`).
run: install
	$(BIN)/acl-run $(ARGS)

serve: install
	$(BIN)/teacher-service serve $(ARGS)

# Three test files at a time (pytest-xdist; a file's tests stay together, sharing its fixtures): most tests wait on
# the services and students they start, and a serial run took 14 to 17 minutes here.
test: install system-deps
	$(BIN)/pytest -q -n 3 --dist loadfile

bench: install
	$(BIN)/python bench/service_load.py
	$(BIN)/python bench/student_speed.py

clean:
	rm -rf $(VENV) teacher-data runs
