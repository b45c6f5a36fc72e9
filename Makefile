# Two commands for a user: `make demo` and `make test`. Both create .venv and
# install torch==2.13.0 first (the CPU wheel on this machine; any other spelling
# pulls CUDA wheels), then the project with its dev extras.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test install browser clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ssmlens demo

test: $(STAMP) browser
	$(PY) -m pytest -q

# The dashboard's browser tests drive Debian's headless Chromium; install it when
# missing (needs root, as on the CI machine). Without it those tests are skipped.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian chromium + chromium-driver for the browser tests"; \
	  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium/chromedriver missing and not root: browser tests will be skipped"; fi

clean:
	rm -rf $(VENV) runs .pytest_cache
