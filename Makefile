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

.PHONY: demo study study-previous test test-fast lint bench gpu-check test-slurm clean

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

# The study (config/study.yaml, ~2 h on 2 CPU cores), then docs/study.md generated from its report.
# Before changing config/study.yaml for a new study, `make study-previous` keeps the design and the
# runs that docs/study.md describes in docs/study/previous/: the new docs/study.md says what changed
# and how plan-study on those runs chose the new design (at STUDY_DESIGN_TARGET, the MDE asked for).
STUDY_DESIGN_TARGET ?= 0.03
# The LOGO model's pretraining throughput on one H200 at 50 x 5 (250 sequences, ~95k tokens per step),
# measured by scripts/gpu_check.sh (README table of commit b87524a); replace with a newer measurement.
H200_LOGO_TOKENS_PER_S ?= 1120000
H200_LOGO_TOKENS_PER_STEP ?= 95000
STUDY_CMD = snakemake --configfile config/study.yaml --cores $(CORES)
study: $(BIN)/genemask
	@start=$$(date +%s); \
	$(BIN)/$(STUDY_CMD) --keep-going && \
	$(BIN)/genemask timings results/benchmarks > results/report/timings.txt && \
	$(BIN)/genemask study-doc --config config/study.yaml --command "make study ($(STUDY_CMD))" \
	  --wall-s $$(( $$(date +%s) - start )) --timings results/report/timings.txt -o docs/study.md --readme README.md \
	  --previous docs/study/previous --design-target $(STUDY_DESIGN_TARGET) --bench-dir results/benchmarks \
	  --gpu-config config/study-gpu.yaml --gpu-tokens-per-s $(H200_LOGO_TOKENS_PER_S) \
	  --gpu-tokens-per-step $(H200_LOGO_TOKENS_PER_STEP) && \
	echo "study finished in $$(( $$(date +%s) - start )) s: docs/study.md"

study-previous:
	mkdir -p docs/study/previous
	cp config/study.yaml docs/study/previous/study.yaml
	cp docs/study/runs.tsv docs/study/variance.tsv docs/study/verdict.tsv docs/study/previous/

test: $(BIN)/genemask
	$(BIN)/pytest -q

test-fast: $(BIN)/genemask
	$(BIN)/pytest -q -n 2 -m "not slow"

# Root only (CI): installs SLURM + munge with apt, starts a one-node cluster with 2 fake GPUs, runs the
# shrunk DAG through the SLURM executor (profiles/slurm + profiles/slurm-ci), stops it again (~3-4 min).
test-slurm: $(BIN)/genemask
	VENV=$(VENV) bash .ci/slurm/run.sh

lint: $(BIN)/genemask
	$(BIN)/ruff check src tests
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakefmt --check workflow

# The benchmarks (minutes of CPU), then docs/performance.md generated from what they printed
# (genemask bench-doc: commit, date, machine). Measured numbers live there, not in the README.
BENCH_OUT := results/bench
DEMO_FASTA := $(GENEMASK_MIRROR)/genome/hg38_chr2_1-2333275.fa.gz
MASK_SCHEMES := random dnabert genemask reference global_pmi
# $(call bench_run,NAME,ARGS): `genemask ARGS`, its output (first line: the command) in $(BENCH_OUT)/NAME.txt
bench_run = set -o pipefail; { echo "$$ genemask $(2)"; $(BIN)/genemask $(2); } | tee $(BENCH_OUT)/$(1).txt
bench: $(BIN)/genemask
	@mkdir -p $(BENCH_OUT)
	@$(call bench_run,1-masking,bench masking)
	@$(call bench_run,2-ngrams,bench ngrams $(GENEMASK_MIRROR)/genome/GRCh37_chrX_1-69999930.hs37chrXtrunc.fa.gz)
	@$(call bench_run,3-train-logo,bench train)
	@$(call bench_run,3-train-demo,bench train --model-config resources/models/demo.json)
	@$(call bench_run,3-train-bert-base,bench train --model-config resources/models/dnabert.json)
	@$(call bench_run,4-finetune,bench finetune)
	@for s in $(MASK_SCHEMES); do $(call bench_run,5-mask-stats-$$s,mask-stats --scheme $$s $(DEMO_FASTA)) || exit 1; done
	$(BIN)/genemask bench-doc $(BENCH_OUT)/1-masking.txt $(BENCH_OUT)/2-ngrams.txt $(BENCH_OUT)/3-train-logo.txt \
	  $(BENCH_OUT)/3-train-demo.txt $(BENCH_OUT)/3-train-bert-base.txt \
	  $(BENCH_OUT)/4-finetune.txt $(foreach s,$(MASK_SCHEMES),$(BENCH_OUT)/5-mask-stats-$(s).txt) -o docs/performance.md

# The GPU check (scripts/gpu_check.sh; docs/development.md): pytest -m gpu, then the memory per sequence,
# tokens/s and MFU of LOGO and BERT-base; at most 8 minutes on one GPU, the report in results/gpu_check.txt.
# GPU_CHECK_ARGS=--cpu-smoke rehearses it on the CPU.
gpu-check: $(BIN)/genemask
	PYTHON=$(abspath $(BIN))/python bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf results .snakemake
