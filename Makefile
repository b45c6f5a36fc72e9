# Two commands for a user: `make demo` and `make test`. Both create .venv and
# install torch==2.13.0 first (the CPU wheel on this machine; any other spelling
# pulls CUDA wheels), then the project with its dev extras, every package at the
# known-good version in constraints.txt (pyproject.toml keeps ranges).
# `make check-newest` installs the newest releases instead, in a second venv, and runs
# the smoke subset (.ci/run does both).
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
NEWEST := .venv-newest

.PHONY: demo test install browser versions check-newest constraints clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q -c constraints.txt --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ssmlens demo

# The pytest entry point (never `python -m pytest`, which would put the repo root on
# sys.path: its kernels/ folder would shadow Hugging Face's `kernels`).
test: $(STAMP) browser versions
	$(VENV)/bin/pytest -q

versions: $(STAMP)
	@echo "versions used: Python $$($(PY) -c 'import sys; print(sys.version.split()[0])');" \
	  "$$($(PIP) list --format=freeze --exclude-editable 2>/dev/null | tr '\n' ' ')"

# The newest release of every dependency (no constraints; torch stays the 2.13.0 CPU
# wheel: any newer torch is a multi-GB CUDA download here), the project installed as a
# wheel, and the smoke subset (`pytest -m smoke`: every import, a forward of each model,
# a store round trip, each CLI --help, the notebook). Names what moved since constraints.txt.
check-newest:
	rm -rf $(NEWEST)
	python3 -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install -q --upgrade pip
	$(NEWEST)/bin/python -m pip install -q torch==2.13.0
	$(NEWEST)/bin/python -m pip install -q '.[dev]'
	@$(NEWEST)/bin/python -m pip list --format=freeze 2>/dev/null | sed 's/+cpu$$//' | grep -v '^ssmlens==' \
	  > $(NEWEST)/versions.txt
	@echo "versions used (newest): $$(tr '\n' ' ' < $(NEWEST)/versions.txt)"
	@moved=$$(grep -vxF -f constraints.txt $(NEWEST)/versions.txt | tr '\n' ' '); \
	  echo "newest releases that differ from constraints.txt: $${moved:-none}"
	$(NEWEST)/bin/pytest -q -m smoke -p no:cacheprovider

# Rewrite constraints.txt from what .venv holds now (after a green check-newest and an
# upgrade of .venv, or after adding a dependency).
constraints: $(STAMP)
	@{ head -3 constraints.txt; $(PIP) freeze --all --exclude-editable 2>/dev/null | grep -v '^#' \
	  | sed 's/+cpu$$//' | sort -f; } > constraints.txt.new && mv constraints.txt.new constraints.txt

# The dashboard's browser tests drive Debian's headless Chromium; install it when
# missing (needs root, as on the CI machine). Without it those tests are skipped.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian chromium + chromium-driver for the browser tests"; \
	  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium/chromedriver missing and not root: browser tests will be skipped"; fi

clean:
	rm -rf $(VENV) $(NEWEST) runs .pytest_cache build
