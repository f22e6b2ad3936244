"""GeneMask: NPMI-guided masking for DNA language models, as a Snakemake pipeline (see README.md)."""
__version__ = "0.10.0"
