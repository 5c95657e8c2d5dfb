# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo-report

.PHONY: setup system-deps demo test lint typecheck unit bench clean

# Debian packages the tool and its tests use: pango (WeasyPrint's PDF), chromium (browser
# test and snapshots), poppler-utils (PDF page checks), a Java runtime (the W3C Nu validator).
system-deps:
	@need=""; \
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	command -v pdftoppm >/dev/null 2>&1 || need="$$need poppler-utils"; \
	command -v java >/dev/null 2>&1 || need="$$need default-jre-headless"; \
	ldconfig -p 2>/dev/null | grep -q libpangoft2 || need="$$need libpango-1.0-0 libpangoft2-1.0-0"; \
	fc-list 2>/dev/null | grep -qi dejavu || need="$$need fonts-dejavu-core"; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$need"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	  else \
	    echo "please install these Debian packages (as root):$$need"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: system-deps $(STAMP)

demo: setup
	$(BIN)/reportgen demo --out $(DEMO_OUT)
	@echo "report: $(abspath $(DEMO_OUT))/report.html"

lint: setup
	$(BIN)/ruff check reportgen tests benchmarks
	$(BIN)/ruff format --check reportgen tests benchmarks
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest -n 2 -q

test: lint typecheck unit

bench: setup
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache dist build
