# `make demo` trains on the embedded digits dataset; `make test` runs the test suite.
# Both create .venv from requirements.txt and the tensorboard extra on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test venv clean
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet -e ".[tensorboard]"  # the tests read --logger tensorboard's events
	touch $@

demo: venv
	$(PY) main.py

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
