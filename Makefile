# Two commands on a fresh machine: `make demo` and `make test` (`make ui` starts the web app).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test ui venv clean

$(STAMP): pyproject.toml requirements-test.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU build on disk; an unpinned torch pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e . -r requirements-test.txt
	# lycoris-lora is a test oracle only; --no-deps keeps it from pulling anything heavy.
	$(BIN)/pip install -q --no-deps lycoris-lora==4.1.3
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lorakit.demo --output demo-out

ui: $(STAMP)
	$(BIN)/python -m lorakit.cli ui

# The browser tests of `lorakit ui` need Debian's Chromium (.ci/run installs it); without it they are
# skipped, and said so loudly. pytest runs one worker per logical core (pytest-xdist; each test runs
# single-threaded, tests/conftest.py), at most 4 as each builds its own tiny models.
test: $(STAMP)
	@test -x /usr/bin/chromium || echo "*** lorakit ui BROWSER TESTS WILL BE SKIPPED: /usr/bin/chromium is missing (apt-get install chromium) ***"
	$(BIN)/python -m pytest -rs -n logical --maxprocesses 4
	@test -x /usr/bin/chromium || echo "*** lorakit ui BROWSER TESTS WERE SKIPPED: /usr/bin/chromium is missing (apt-get install chromium) ***"

clean:
	rm -rf $(VENV) demo-out
