# Iris: two commands on a fresh machine (see README.md).
#   make app    set up .venv (idempotent) and run the Streamlit app, offline, on the embedded model,
#               on 127.0.0.1 (make app HOST=0.0.0.0 shares it; it then needs IRIS_PASSWORD)
#   make test   set up .venv + test tools (idempotent) and run every test, slow ones included
# Set-up is keyed on the requirements files' hash, so a second run skips straight to the work.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501
# Local by default: HOST=0.0.0.0 shares the app and needs a password (IRIS_PASSWORD or `python -m core.access set-password`).
HOST   ?= 127.0.0.1
REQ_HASH := $(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
# A CUDA machine (nvidia-smi lists a GPU): the venv sees the machine's own CUDA torch (--system-site-packages),
# requirements.txt goes in without its CPU torch pin, then requirements-gpu.txt (unsloth, bitsandbytes), with torch
# held at the machine's version by a constraint. A CPU machine is unchanged.
GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q GPU && echo 1)
ifeq ($(GPU),1)
VENV_FLAGS := --system-site-packages
REQ_HASH := $(shell cat requirements.txt requirements-dev.txt requirements-gpu.txt | sha1sum | cut -c1-12)-gpu
endif
# llama-cpp-python compiles from source (~4 min on 2 cores); pip caches the wheel, so later installs are instant.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: app test setup setup-dev clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.stamp-app-$(REQ_HASH): $(PY) requirements.txt requirements-gpu.txt
ifeq ($(GPU),1)
	$(PY) -c "import torch; assert torch.cuda.is_available(), 'install a CUDA torch first'; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	grep -v '^torch==' requirements.txt > $(VENV)/requirements-cuda.txt
	$(PY) -m pip install -c $(VENV)/torch-constraint.txt -r $(VENV)/requirements-cuda.txt -r requirements-gpu.txt
	@# a torchvision built for another torch breaks `import unsloth`; nothing in Iris needs it
	$(PY) -c "import unsloth" 2>/dev/null || $(PY) -m pip uninstall -y torchvision
else
	$(PY) -m pip install -r requirements.txt
endif
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

app: $(VENV)/.stamp-app-$(REQ_HASH)
	@$(PY) -m core.access check-host "$(HOST)"
	$(PY) -m core.models materialise
	$(PY) -m ui.serve --server.headless true --server.address "$(HOST)" \
		--server.port $(PORT) --browser.gatherUsageStats false

test: setup-dev
	$(PY) -m pytest -m "slow or not slow" tests

clean-venv:
	rm -rf $(VENV)
