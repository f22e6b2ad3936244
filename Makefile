# The two commands of the README: `make demo` and `make test`. Both create the virtual environment
# with the pinned dependencies when it is missing. GENEMASK_MIRROR names the offline data mirror.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
GENEMASK_MIRROR ?= $(abspath ../shared/data)
export GENEMASK_MIRROR
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo study test test-fast lint bench test-slurm clean

$(BIN)/genemask: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

demo: $(BIN)/genemask
	@start=$$(date +%s); \
	$(BIN)/snakemake --configfile config/demo.yaml --cores $(CORES) --printshellcmds --show-failed-logs && \
	$(BIN)/snakemake --configfile config/demo.yaml --report results/snakemake_report.html && \
	$(BIN)/genemask timings results/benchmarks && \
	echo "demo finished in $$(( $$(date +%s) - start )) s; reports: results/snakemake_report.html, results/report/report.html"

# The study (config/study.yaml, ~1-2 h on 2 CPU cores), then docs/study.md generated from its report.
STUDY_CMD = snakemake --configfile config/study.yaml --cores $(CORES)
study: $(BIN)/genemask
	@start=$$(date +%s); \
	$(BIN)/$(STUDY_CMD) --keep-going && \
	$(BIN)/genemask timings results/benchmarks > results/report/timings.txt && \
	$(BIN)/genemask study-doc --config config/study.yaml --command "make study ($(STUDY_CMD))" \
	  --wall-s $$(( $$(date +%s) - start )) --timings results/report/timings.txt -o docs/study.md && \
	echo "study finished in $$(( $$(date +%s) - start )) s: docs/study.md"

test: $(BIN)/genemask
	$(BIN)/pytest -q

test-fast: $(BIN)/genemask
	$(BIN)/pytest -q -m "not slow"

# Root only (CI): installs SLURM + munge with apt, starts a one-node cluster with 2 fake GPUs, runs the
# shrunk DAG through the SLURM executor (profiles/slurm + profiles/slurm-ci), stops it again (~3-4 min).
test-slurm: $(BIN)/genemask
	VENV=$(VENV) bash .ci/slurm/run.sh

lint: $(BIN)/genemask
	$(BIN)/ruff check src tests
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakefmt --check workflow

bench: $(BIN)/genemask
	$(BIN)/genemask bench masking
	$(BIN)/genemask bench ngrams $(GENEMASK_MIRROR)/genome/GRCh37_chrX_1-69999930.hs37chrXtrunc.fa.gz
	$(BIN)/genemask bench train
	$(BIN)/genemask bench finetune

clean:
	rm -rf results .snakemake
