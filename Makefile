# make demo: fresh machine → full pipeline on the embedded nsd-synth default → results/
# make test: fresh machine → lint + all tests
VENV ?= .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test lint report rulegraph clean

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

# The README's figure: every rule of the demo and of the stages built by name (graphviz's `dot`: apt install graphviz).
rulegraph: $(VENV)/.installed
	snakemake --rulegraph --forceall --cores 1 all mindbridge results/tables/scuba_nouns.tsv | dot -Tsvg -o docs/rulegraph.svg

clean:
	rm -rf results logs benchmarks .snakemake
