#!/usr/bin/env bash
# Snakemake runs this once in the new environment: the brainatt package, editable (the environment runs the
# workflow's own code) and without dependencies (the environment file lists them). BRAINATT_SOURCE is the
# repository root, exported by workflow/rules/common.smk.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation --editable "${BRAINATT_SOURCE:?run this through snakemake}"
