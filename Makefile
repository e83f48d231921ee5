# The two commands of the README:  make demo  |  make test
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test install lint bench browser postgres labextension

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,examples,lab,nodes,postgres]'
	@# what a wheel's data-files install, for this editable install: the server extension
	@# enabled, the prebuilt lab extension linked
	mkdir -p $(VENV)/etc/jupyter/jupyter_server_config.d $(VENV)/share/jupyter/labextensions
	cp jupyter-config/jupyter_server_config.d/casare_nb.json $(VENV)/etc/jupyter/jupyter_server_config.d/
	ln -sfn $(CURDIR)/casare_nb/labextension $(VENV)/share/jupyter/labextensions/casare-nb
	touch $@

install: $(VENV)/.installed

## install, then run the example workflows (one fails and is resumed) and print the history
demo: install
	$(BIN)/casare-nb demo

## Debian's chromium for the browser tests (Playwright cannot download its own browser here)
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

## Debian's PostgreSQL server binaries: the PostgreSQL tests start a throwaway cluster of their own
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

## install, then lint, type-check and pass the whole test suite (the notebooks, the browser and PostgreSQL tests too)
test: install browser postgres lint
	$(BIN)/pytest -q -p no:cacheprovider tests
	$(BIN)/pytest -q -p no:cacheprovider --nbval-lax notebooks

lint: install
	$(BIN)/ruff check casare_nb tests bench scripts
	$(BIN)/ruff format --check casare_nb tests bench scripts
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/run_all.py

## rebuild the prebuilt lab extension (casare_nb/labextension, committed) from extensions/labextension
labextension: install
	cd extensions/labextension && PATH=$(CURDIR)/$(BIN):$$PATH jlpm install --immutable && PATH=$(CURDIR)/$(BIN):$$PATH jlpm build:prod
