# The README's two commands: `make demo` (main job on the embedded benchmark) and `make test`.
# Both build .venv from the pinned requirements.lock first, so a fresh machine with only
# Python 3.11 and pip needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.litlab-installed
WORKDIR ?= workdirs/demo

.PHONY: demo test venv lock bench clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"litlab needs Python 3.11, found {sys.version.split()[0]}"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m litlab.demo --workdir $(WORKDIR)

test: $(STAMP)
	LITLAB_SMOKE=1 $(PY) -m pytest -q tests --nbmake notebooks

bench: $(STAMP)
	$(PY) -m litlab.bench

# Regenerate the lock from pyproject.toml in a throwaway venv.
lock:
	rm -rf /tmp/litlab-lock && $(PYTHON) -m venv /tmp/litlab-lock
	/tmp/litlab-lock/bin/pip install -q --upgrade pip
	/tmp/litlab-lock/bin/pip install -q -e '.[test]'
	( echo '# Full pinned set (pip freeze of a clean install of pyproject.toml + [test] on Python 3.11).'; \
	  echo '# Makefile installs from this file; regenerate with `make lock`.'; \
	  /tmp/litlab-lock/bin/pip freeze --exclude-editable ) > requirements.lock

clean:
	rm -rf $(VENV) workdirs .cache
