# Quick start:  make demo   (install, build from ../shared/data, serve on 127.0.0.1, answer real requests)
#               make test   (install, run the test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/qac demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
