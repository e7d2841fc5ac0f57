# Iris: two commands on a fresh machine (see README.md).
#   make app    set up .venv (idempotent) and run the Streamlit app, offline, on the embedded model
#   make test   set up .venv + test tools (idempotent) and run every test, slow ones included
# Set-up is keyed on the requirements files' hash, so a second run skips straight to the work.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501
REQ_HASH := $(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
# llama-cpp-python compiles from source (~4 min on 2 cores); pip caches the wheel, so later installs are instant.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: app test setup setup-dev clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.stamp-app-$(REQ_HASH): $(PY) requirements.txt
	$(PY) -m pip install -r requirements.txt
	$(PY) -m core.llamacpp setup
	touch $@

$(VENV)/.stamp-dev-$(REQ_HASH): $(VENV)/.stamp-app-$(REQ_HASH) requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	@# Debian's Chromium for the end-to-end browser test (Playwright drives it via executable_path).
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	touch $@

setup: $(VENV)/.stamp-app-$(REQ_HASH)
	$(PY) -m core.models materialise

setup-dev: $(VENV)/.stamp-dev-$(REQ_HASH)

app: setup
	$(PY) -m ui.serve --server.headless true --server.port $(PORT) \
		--browser.gatherUsageStats false

test: setup-dev
	$(PY) -m pytest -m "slow or not slow" tests

clean-venv:
	rm -rf $(VENV)
