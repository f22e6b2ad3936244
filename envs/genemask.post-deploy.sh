#!/usr/bin/env bash
# Run by snakemake once after it creates the conda env from genemask.yaml (--sdm conda): installs
# the genemask package itself from the checkout, whose path workflow/rules/common.smk exports.
set -euo pipefail
pip install --no-deps -e "${GENEMASK_ROOT:?GENEMASK_ROOT is set by workflow/rules/common.smk}"
