# The two commands of the README: `make report` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mp3kit-installed

.PHONY: setup report test bench clean-report

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The whole report on the embedded synthetic dataset (quick profile).
report: setup
	$(PY) -m mp3kit report --profile quick

# ruff (configured in pyproject.toml), then the unit tests plus the three notebooks under nbval in the smoke profile.
test: setup
	$(PY) -m ruff check .
	MP3KIT_PROFILE=smoke MPLBACKEND=Agg $(PY) -m pytest -q tests notebooks --nbval-lax -p no:cacheprovider

bench: setup
	$(PY) -m mp3kit bench
