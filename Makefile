# The two commands of the README: `make report` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mp3kit-installed

.PHONY: setup report test test-quick bench colab-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The whole report on the embedded synthetic dataset (quick profile), notebook 3 running the seed report's network
# and ablation as its worked example (labelled so): a demonstration of the kit, not a student's part 1B.
report: setup
	$(PY) -m mp3kit report --profile quick --set WORKED_EXAMPLE=True

# ruff (configured in pyproject.toml), then the unit tests plus the three notebooks under nbval in the smoke profile.
test: setup
	$(PY) -m ruff check .
	MP3KIT_PROFILE=smoke MPLBACKEND=Agg $(PY) -m pytest -q tests notebooks --nbval-lax -p no:cacheprovider

# The loop while working on mp3kit: leaves out the tests marked slow (kernels, browsers, virtualenvs, long training).
test-quick: setup
	MP3KIT_PROFILE=smoke MPLBACKEND=Agg $(PY) -m pytest -q -m "not slow" tests -p no:cacheprovider

bench: setup
	$(PY) -m mp3kit bench

# Before a release, not in CI (it downloads about 4 GB): Colab's stack in a Python 3.13 virtualenv, with the versions
# Colab publishes (tests/data/colab; tools/colab_env.py constraints), mp3kit installed from this checkout as the set-up
# cell installs it, then the three notebooks under nbval in the smoke profile, training afresh in a temporary runs folder.
COLAB_PYTHON ?= python3.13
COLAB_VENV ?= .venv-colab

colab-check:
	test -x $(COLAB_VENV)/bin/python || $(COLAB_PYTHON) -m venv $(COLAB_VENV)
	$(PYTHON) tools/colab_env.py constraints > $(COLAB_VENV)/colab-constraints.txt
	$(COLAB_VENV)/bin/python -m pip install --quiet -c $(COLAB_VENV)/colab-constraints.txt . nbval pytest
	$(COLAB_VENV)/bin/python -c "import sys, IPython, ipykernel, ipywidgets, torch; print('colab-check:', sys.version.split()[0], \
		'ipykernel', ipykernel.__version__, 'ipython', IPython.__version__, 'ipywidgets', ipywidgets.__version__, 'torch', torch.__version__)"
	cd notebooks && MP3KIT_RUNS_DIR=$$(mktemp -d) MP3KIT_PROFILE=smoke MPLBACKEND=Agg PYDEVD_DISABLE_FILE_VALIDATION=1 ../$(COLAB_VENV)/bin/python -m pytest -q --nbval-lax --nbval-current-env \
		-p no:cacheprovider --rootdir . 01_introduction.ipynb 02_scratch_vs_pretrained.ipynb 03_develop_classifier.ipynb
