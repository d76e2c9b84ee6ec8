# make demo: fresh machine → full pipeline on the embedded nsd-synth default → results/
# make test: fresh machine → lint + all tests
VENV ?= .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test lint report clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	snakemake --cores all
	snakemake --report results/report.html

lint: $(VENV)/.installed
	ruff check .
	ruff format --check .
	snakemake --lint

test: lint
	pytest -q

clean:
	rm -rf results logs benchmarks .snakemake
