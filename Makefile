# Two commands for a newcomer on a fresh machine:
#   make demo   set everything up, then run `rssn compose` on the project's own sample set
#   make test   set everything up, then run the whole test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# test processes (pytest-xdist): two keep a 2-core machine busy; the suite's slow modules start first
TEST_WORKERS ?= 2

.PHONY: setup demo test bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/rssn compose --fg samples/fg --bg samples/bg --out demo-out --per-fg 3 --seed 0
	@echo "composites in demo-out/image, record of every step in demo-out/manifest.jsonl"

test: setup
	@bash scripts/install-chromium.sh
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

clean:
	rm -rf demo-out .pytest_cache
