"""The `genemask` command: one thin subcommand per pipeline stage.

Each subcommand parses arguments and calls one function of the package; the logic lives in the
modules. Errors caused by input or config (GeneMaskError) print as one line and exit with status 2;
Ctrl-C prints `genemask: interrupted` and exits 130.
Imports are lazy so that `genemask --help` and light commands start fast.

A subcommand lives in one place: a function registered with `@subcommand(name, help)` adds its
arguments and returns a loader of the function it calls. Each argument's dest is that function's
parameter name, so `dispatch` calls it as `fn(**arguments)`. Defaults come from the config schema
(`D`: genemask.defaults), so a command alone runs as the pipeline does.
"""
from __future__ import annotations

import functools
import sys

from .util import BASELINE_MODEL, CLASSIFIER, CORPUS, PRETRAINING_RUN, RECEIVING, GeneMaskError, check_output_target

TYPE_CHECKING = False  # typing's constant without importing typing (10 ms of a worker client's start)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

SUBCOMMANDS: list[tuple[str, str, Callable]] = []  # (name, help, add): add(parser) -> loader of the function


def subcommand(name: str, help: str):
    """Register `add(parser)`: it adds the subcommand's arguments (dest = the called function's
    parameter names) and returns a loader that imports and returns the function (lazily: the
    parser is built without importing the modules behind the commands)."""
    def register(add):
        SUBCOMMANDS.append((name, help, add))
        return add
    return register


def lazy(module: str, name: str):
    """The loader a subcommand returns: imports genemask.<module> and returns its `name` only when
    the subcommand runs (the parser is built without importing the modules behind the commands)."""
    def load():
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{module}"), name)
    return load


def D(path: str):
    """The config schema's default of one key (genemask.defaults, imported when the parser is built)."""
    from .defaults import default

    return default(path)


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    # Built once per process (the warm worker builds it before it forks, so its runs reuse it).
    # Imported here, not at the top: a `genemask finetune` through the warm worker never builds a
    # parser in the calling process (main hands its argv over first), so it does not pay for them.
    import argparse

    ap = argparse.ArgumentParser(prog="genemask", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help, add in SUBCOMMANDS:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(_target=add(p))
    return ap


def dispatch(args: argparse.Namespace):
    """Call the subcommand's function with its arguments, by name."""
    kwargs = {k: v for k, v in vars(args).items() if k not in ("command", "_target")}
    return args._target()(**kwargs)


# ---- sources / genome (sources.py, genome.py) -----------------------------------------------
@subcommand("fetch", "download a declared source (or copy it from $GENEMASK_MIRROR) and verify it: pinned "
            "sha256, else the sha256 locked in <output>.sha256, else a published checksum list (then locked)")
def _fetch(p):
    p.add_argument("--url", default=None, help="download URL (none: the file comes from the mirror only)")
    p.add_argument("--origin", default=None, help="where a URL-less source comes from (for the error message)")
    p.add_argument("--sha256", default=None, help="pinned sha256 (wins over lock and list)")
    p.add_argument("--mirror-path", required=True, help="path of the file inside a mirror folder")
    p.add_argument("--checksums-url", default=None, help="published checksum list (md5sum format) beside the file")
    p.add_argument("--checksums-algorithm", default="md5", help="digest the list holds (md5, sha1, sha256, sha512)")
    p.add_argument("--checksums-path", default=None, help="path of the list inside a mirror folder")
    p.add_argument("--mirror", default=None, help="mirror folder (default: $GENEMASK_MIRROR)")
    p.add_argument("-o", "--output", required=True)
    return lambda: fetch_cli


def fetch_cli(url, origin, sha256, mirror_path, checksums_url, checksums_algorithm, checksums_path, mirror, output):
    """`genemask fetch`: the three --checksums-* flags become sources.fetch's `checksums` mapping."""
    from .sources import fetch

    checksums = None
    if checksums_url:
        if not checksums_path:
            raise GeneMaskError("--checksums-url needs --checksums-path (the list's path inside a mirror folder)")
        checksums = {"url": checksums_url, "algorithm": checksums_algorithm, "path": checksums_path}
    return fetch(url, sha256, mirror_path, output, mirror=mirror, checksums=checksums, origin=origin)


@subcommand("index", "validate a FASTA, keep the chosen contigs, write it bgzip-compressed with .fai/.gzi")
def _index(p):
    p.add_argument("fasta")
    p.add_argument("--contigs", nargs="*", default=None, help="contigs to keep, NAME or NAME:LENGTH (default: all)")
    p.add_argument("-o", "--output", required=True, help="output .fa.gz (bgzip)")

    return lazy("genome", "index_fasta")


@subcommand("chunks", "split an indexed FASTA into contig windows, one region per line")
def _chunks(p):
    p.add_argument("fasta")
    p.add_argument("--size", type=int, required=True, help="window size in bp")
    p.add_argument("--contigs", nargs="*", default=None,
                   help="contigs to plan, in this order, NAME or NAME:LENGTH (default: all, in file order)")
    p.add_argument("-o", "--output", required=True, help="TSV: chunk, contig, start, end (0-based, half-open)")

    return lazy("genome", "write_chunks")


# ---- n-grams and NPMI (ngrams.py, npmi.py) --------------------------------------------------
@subcommand("ngrams", "count overlapping n-grams of orders 1..max in a FASTA (or one region of it)")
def _ngrams(p):
    p.add_argument("fasta")
    p.add_argument("--region", default=None,
                   help="CHR, CHR:START-END (1-based, inclusive, as samtools) or {CHR}:START-END; "
                        "coordinates are read from the right, so names with ':' work")
    p.add_argument("--max-order", type=int, default=D("ngrams.max_order"))
    p.add_argument("-o", "--output", required=True)

    return lazy("ngrams", "count_fasta_to_file")


@subcommand("merge", "add n-gram count files")
def _merge(p):
    p.add_argument("inputs", nargs="+", metavar="counts")
    p.add_argument("-o", "--output", required=True)

    return lazy("ngrams", "merge_files")


@subcommand("npmi", "score n-grams by (normalised) PMI and rank them")
def _npmi(p):
    p.add_argument("counts")
    p.add_argument("--variant", choices=["paper", "levine"], default=D("npmi.variant"))
    p.add_argument("--min-count", type=int, default=D("npmi.min_count"))
    p.add_argument("-o", "--output", required=True)

    return lazy("npmi", "npmi_file")


# ---- corpus (corpus.py) ---------------------------------------------------------------------
@subcommand("corpus", "cut a FASTA region into pretraining pieces and write token ids (train/valid)")
def _corpus(p):
    p.add_argument("fasta")
    p.add_argument("--region", default=None)
    p.add_argument("--k", type=int, default=D("corpus.k"))
    p.add_argument("--max-bp", type=int, default=D("corpus.max_bp"))
    p.add_argument("--min-bp", type=int, default=D("corpus.min_bp"))
    p.add_argument("--valid-fraction", type=float, default=D("corpus.valid_fraction"))
    p.add_argument("--seed", type=int, default=D("corpus.seed"))
    p.add_argument("-o", "--output", required=True, help="output folder (train.bin, valid.bin, index)")

    return lazy("corpus", "build_corpus")


# ---- masking (maskstats.py) -----------------------------------------------------------------
@subcommand("mask-stats", "masking statistics of a scheme on real sequence")
def _mask_stats(p):
    p.add_argument("fasta")
    p.add_argument("--scheme", required=True)
    p.add_argument("--ranking", default=None, help="NPMI table (ours or Data-A); default: the published Data-A")
    p.add_argument("--k", type=int, default=D("corpus.k"))
    p.add_argument("--n-seqs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="masking option (p, high_rule, high_radius, ramp, mask_prob, random_prob, global_p, "
                        "threshold, switch_at, faithful); repeatable")
    p.add_argument("--step", type=int, default=0, help="training step (curriculum, cm_step, cm_gems)")
    p.add_argument("--total-steps", type=int, default=1, help="total training steps (curriculum, cm_step)")

    return lazy("maskstats", "mask_stats_cli")


# ---- pretraining (pretrain.py, baselines.py) ------------------------------------------------
@subcommand("pretrain", "pretrain a masked language model with one masking scheme")
def _pretrain(p):
    p.add_argument("--corpus", nargs="+", required=True, help="corpus folders written by `genemask corpus`")
    p.add_argument("--model-config", required=True, help="JSON model configuration (resources/models/*.json)")
    p.add_argument("--scheme", required=True)
    p.add_argument("--ranking", default=None, help="NPMI table for genemask/curriculum/reference")
    p.add_argument("--settings", default=None, help="JSON/YAML file with training settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting")
    p.add_argument("--save-steps", type=int, nargs="*", default=[], metavar="N",
                   help="also save the model at these steps (the last step is always saved)")
    p.add_argument("-o", "--output", required=True, help="run folder: step<N>/ Hugging Face model folders + logs")

    return lazy("pretrain", "pretrain_cli")


@subcommand("baseline", "resolve an external model (folder or hub id), check its k-mer vocabulary, copy it")
def _baseline(p):
    p.add_argument("--name", required=True)
    p.add_argument("--model", dest="spec", metavar="MODEL", required=True,
                   help="Hugging Face folder or hub id (owner/name)")
    p.add_argument("--revision", default=None)
    p.add_argument("-o", "--output", required=True)

    return lazy("baselines", "prepare_baseline")


# ---- few-shot tasks (tasks.py, finetune.py) -------------------------------------------------
@subcommand("task-data", "clean a task's shot file and test set: raw bp, leakage removed, test subsampled")
def _task_data(p):
    p.add_argument("--task", required=True)
    p.add_argument("--train", required=True, help="K-shot training file")
    p.add_argument("--test", required=True, help="test file (6-mer TSV or raw-bp CSV)")
    p.add_argument("--exclude", nargs="*", default=[], help="files whose rows are removed from the test set")
    p.add_argument("--num-labels", type=int, required=True)
    p.add_argument("--max-test", type=int, default=D("finetune.max_test"),
                   help="subsample the test set to this many rows (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=D("corpus.k"), help="the model's k: shorter sequences are refused")
    p.add_argument("--window-tokens", type=int, default=D("finetune.settings.max_length") - 2,  # [CLS], [SEP]
                   help="k-mer tokens the model sees; longer sequences are counted as truncated in the stats")
    p.add_argument("--draw", type=int, default=None, metavar="K",
                   help="--train is a labelled pool: draw K rows per class from it (stratified, seeded)")
    p.add_argument("--draw-seed", type=int, default=D("definitions.local_task.draw_seed"))
    p.add_argument("--label-names", action="store_true", help="accept label names (sorted -> 0..n-1)")
    p.add_argument("--on-conflict", choices=["error", "drop"], default=D("definitions.catalogued_task.on_conflict"),
                   help="a sequence with conflicting labels: refuse (default) or drop its rows")
    p.add_argument("--out-train", required=True)
    p.add_argument("--out-test", required=True)
    p.add_argument("--out-stats", required=True)

    return lazy("tasks", "prepare_task_data")


@subcommand("finetune", "fine-tune a pretrained model on a K-shot set and score it on the test set")
def _finetune(p):
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--shot", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--scheme", required=True)
    p.add_argument("--num-labels", type=int, required=True)
    p.add_argument("--settings", default=None,
                   help="fine-tuning settings: a JSON string or a JSON/YAML file (schema: genemask.finetune docstring)")
    p.add_argument("--save-model", default=None, metavar="FOLDER",
                   help="also keep the fine-tuned classifier as a Hugging Face folder (config with id2label)")
    p.add_argument("-o", "--output", required=True, help="metrics JSON")

    return lazy("finetune", "finetune_cli")


# ---- using a model (inference.py) -----------------------------------------------------------
def _inference_args(p, model_help: str, output_help: str, own=None, unit: str = "windows") -> None:
    """The arguments predict, embed and explain share (their own, if any, after the input); --stride
    where the unit of a batch is windows (explain runs one window per record)."""
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("input", help="FASTA (.fa/.fasta/.fna[.gz]) or table (.tsv/.csv[.gz], a sequence column)")
    if own is not None:
        own(p)
    if unit == "windows":
        p.add_argument("--stride", type=int, default=D("predict.stride"),
                       help="tokens between window starts (default: half a window)")
    p.add_argument("--batch-size", type=int, default=D("predict.batch_size"), help=f"{unit} per forward pass")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default=D("predict.device"))
    _bf16_arg(p)
    p.add_argument("-o", "--output", required=True, help=output_help)


def _bf16_arg(p) -> None:
    """--bf16 auto|true|false (default: the schema's predict.bf16), for the commands that run a model forward."""
    default = D("predict.bf16")
    p.add_argument("--bf16", choices=["auto", "true", "false"], default=str(default).lower(),
                   help="bf16 autocast of the forward passes: auto = on CUDA with bf16 and on CPUs with "
                        "amx_bf16/avx512_bf16 (genemask.precision)")


@subcommand("predict", "class probabilities of new sequences (FASTA or TSV/CSV) from a fine-tuned classifier")
def _predict(p):
    _inference_args(p, "fine-tuned classifier folder (modelfolder.save_classifier)",
                    "TSV: id, prob_<label> per class, predicted")

    return lazy("inference", "predict_cli")


@subcommand("embed", "per-sequence vectors of new sequences from any model folder (pretrained or fine-tuned)")
def _embed(p):
    def own(p):
        p.add_argument("--pooling", choices=["cls", "mean"], default=D("predict.embed.pooling"))
        p.add_argument("--layer", type=int, default=D("predict.embed.layer"),
                       help="hidden state: 0 = embeddings, 1..L layers, -1 = last")

    _inference_args(p, "model folder", ".npy (ids in <stem>.ids.txt beside it) or .parquet (columns id, "
                    "embedding: list<float32>)", own)

    return lazy("inference", "embed_cli")


@subcommand("explain", "per-base attributions of a fine-tuned classifier by in-silico saturation mutagenesis "
            "(every single-base substitution's change in the target class's log-odds)")
def _explain(p):
    def own(p):
        p.add_argument("--target-class", type=int, default=1,
                       help="class index whose log-odds are explained (default 1: a binary task's positive class)")
        p.add_argument("--max-seqs", type=int, default=None, metavar="N", help="explain the first N records only")
        p.add_argument("--bedgraph", default=None, metavar="FILE",
                       help="also the per-base score as bedGraph (record ids must be chrom:start-end, 1-based)")
        p.add_argument("--label", type=int, default=None,
                       help="the input is a task file (sequence, label): explain only its rows of this label")

    _inference_args(p, "fine-tuned classifier folder (modelfolder.save_classifier)",
                    ".npz: ids, sequence, lengths, ism / centred [n, 4, L] (rows A C G T), score [n, L], "
                    "reference_logit", own, unit="mutant sequences")

    # ISM measures small differences of log-odds: bf16 adds about 1e-3 of noise to each, so explain
    # runs in float32 unless asked (--bf16 auto|true)
    p.set_defaults(bf16="false")

    return lazy("explain", "explain_cli")


@subcommand("explain-motifs", "seqlets (windows of high attribution) and motifs (modisco-lite) of explain .npz "
            "files, matched to JASPAR by Tomtom, and each record's reliance on matched motifs")
def _explain_motifs(p):
    from .attribution_motifs import DEFAULTS as A

    p.add_argument("inputs", nargs="+", metavar="NPZ", help="genemask explain outputs (pooled)")
    p.add_argument("-o", "--output", required=True, help="motifs TSV: motif, attribution, n_seqlets, width, "
                   "consensus, jaspar_id, jaspar_name, p, q, matched, n_jaspar_matches, strand")
    p.add_argument("--seqlets", default=None, metavar="TSV", help="seqlets: source, id, start, end (0-based), "
                   "strand, attribution, window_sum, q, mass, motif, matched")
    p.add_argument("--reliance", default=None, metavar="TSV", help="per record: source, id, length, total_mass, "
                   "seqlet_mass, matched_mass, n_seqlets, n_matched_seqlets, seqlet_share, reliance")
    p.add_argument("--logos", default=None, metavar="PNG", help="motif logos beside their best JASPAR matches")
    p.add_argument("--window", type=int, default=A["window"], help="bp summed per candidate window")
    p.add_argument("--flank", type=int, default=A["flank"], help="bp added on each side: a seqlet is window + 2 flank")
    p.add_argument("--fdr", type=float, default=A["fdr"], help="Benjamini-Hochberg level of the windows' Laplace null")
    p.add_argument("--min-seqlets", type=int, default=A["min_seqlets"],
                   help="seqlets a sign needs for motif discovery, and seqlets a motif needs")
    p.add_argument("--q-threshold", type=float, default=D("report.motif_q_threshold"),
                   help="Tomtom q-value for a JASPAR match")
    p.add_argument("--release", default=None, help="JASPAR release in pyjaspar (default: the latest shipped)")

    return lazy("attribution_motifs", "explain_motifs_cli")


@subcommand("explain-report", "motifs per scheme and motif reliance compared between schemes, paired on "
            "pretraining seed and test record (from explain-motifs' tables)")
def _explain_report(p):
    p.add_argument("--input", dest="inputs", nargs=4, action="append", required=True,
                   metavar=("TASK", "SCHEME", "MOTIFS_TSV", "RELIANCE_TSV"),
                   help="one scheme's explain-motifs tables on one task; repeat per task x scheme")
    p.add_argument("--motifs-out", required=True, help="TSV: every motif with its task, scheme and JASPAR match")
    p.add_argument("--reliance-out", required=True, help="TSV: mean reliance per task x scheme and the paired tests")

    return lazy("explainreport", "explain_report_cli")


# ---- report (report.py, aggregate.py, figures.py) -------------------------------------------
@subcommand("aggregate", "collect run metrics: one TSV row per run, mean +- sd table, tests, plots")
def _aggregate(p):
    from .defaults import defaults

    p.add_argument("metrics_jsons", nargs="+", metavar="metrics")
    p.add_argument("--outdir", required=True)
    p.add_argument("--missing", dest="expected", default=None, metavar="TSV",
                   help="settings without data, listed as 'missing' in the report (columns task, shot, reason)")
    p.add_argument("--include", nargs="*", default=[], metavar="FILE",
                   help="extra PNG/TSV files to embed in report.html (e.g. loss.png, motifs.tsv)")
    p.add_argument("--equivalence-margin", dest="margins", nargs="+", default=[], metavar="METRIC=MARGIN",
                   help="TOST margin of a verdict metric (default: the schema's report.equivalence_margin: "
                        + ", ".join(f"{k}={v}" for k, v in defaults("report.equivalence_margin").items()) + ")")

    return lazy("aggregate", "aggregate_cli")


# ---- report figures and motifs (figures.py, motifs.py) -- owned by the report engineer ------
@subcommand("plot-loss", "plot pretraining loss curves (train and validation loss vs step) of several runs")
def _plot_loss(p):
    p.add_argument("logs", nargs="+", metavar="LOG.tsv", help="train_log.tsv files written by `genemask pretrain`")
    p.add_argument("--labels", nargs="*", default=None, help="one per log (default: the log's folder name)")
    p.add_argument("-o", "--output", required=True, help="PNG")

    return lazy("figures", "plot_loss")


@subcommand("plot-mask-ranks", "plot the NPMI-rank distribution of masked tokens per masking scheme")
def _plot_mask_ranks(p):
    p.add_argument("--stats", nargs="+", required=True, metavar="TSV",
                   help="mask_ranks.tsv files (columns rank, count) written by `genemask pretrain`")
    p.add_argument("--labels", nargs="*", default=None, help="one per stats file (default: the file's folder name)")
    p.add_argument("--ranking", default=None, help="NPMI table the ranks refer to (sets the number of ranked k-mers)")
    p.add_argument("--reference", default=None, metavar="TSV",
                   help="rank, count of all tokens (default reference: every ranked k-mer once)")
    p.add_argument("--k", type=int, default=D("corpus.k"))
    p.add_argument("-o", "--output", required=True, help="PNG")

    return lazy("figures", "plot_mask_ranks_cli")


@subcommand("motifs", "score the top-N NPMI k-mers against JASPAR motifs (offline) and test enrichment")
def _motifs(p):
    from .defaults import node

    p.add_argument("--ranking", required=True, help="NPMI table (ours or the authors' Data-A CSV)")
    p.add_argument("--top", type=int, default=D("report.motifs_top"))
    p.add_argument("--k", type=int, default=D("corpus.k"))
    p.add_argument("--method", choices=node("report.motif_method")["enum"], default=D("report.motif_method"),
                   help="tomtom: Tomtom (memelite) q-value per k-mer and motif (default); rule: the relative-PWM-score "
                        "rule; both: both, with their overlap")
    p.add_argument("--q-threshold", type=float, default=D("report.motif_q_threshold"),
                   help="Tomtom q-value for a match")
    p.add_argument("--threshold", type=float, default=D("report.motif_rule_threshold"),
                   help="rule: relative PWM score for a hit")
    p.add_argument("--min-ic", type=float, default=D("report.motif_rule_min_ic"),
                   help="rule: min information content (bits) of a motif window")
    p.add_argument("--n-perm", type=int, default=D("report.motif_n_perm"),
                   help="random k-mer sets for the permutation test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--release", default=None, help="JASPAR release in pyjaspar (default: the latest shipped)")
    p.add_argument("--plot", default=None, metavar="PNG")
    p.add_argument("-o", "--output", required=True, help="TSV: kmer, rank, npmi, then tomtom_matches, tomtom_motif, "
                   "tomtom_p, tomtom_q, tomtom_matched and/or rule_hits, rule_motif, rule_score")

    return lazy("motifs", "motifs_cli")
# ---- end of report figures and motifs -------------------------------------------------------


@subcommand("write-missing", "write missing.tsv: task x shot settings that have no data")
def _write_missing(p):
    p.add_argument("entries", nargs="*", metavar="TASK:SHOT")
    p.add_argument("-o", "--output", required=True)

    return lazy("plan", "write_missing")


@subcommand("study-doc", "write docs/study.md from a finished study's report folder (generated, never by hand)")
def _study_doc(p):
    p.add_argument("--report", default="results/report")
    p.add_argument("--config", required=True)
    p.add_argument("--command", dest="run_command", required=True, help="the exact command that ran the study")
    p.add_argument("--wall-s", type=float, default=None)
    p.add_argument("--models", default="results/models")
    p.add_argument("--timings", default=None, help="a file with `genemask timings` output")
    p.add_argument("-o", "--output", default="docs/study.md")
    p.add_argument("--readme", default=None, help="also quote the headline verdict line in this README (its markers)")
    p.add_argument("--previous", default=None,
                   help="the previous study's folder (its study.yaml and runs.tsv; `make study-previous`): generated "
                        "'what changed' and, with --bench-dir, 'how this design was chosen' sections")
    p.add_argument("--design-target", type=float, default=None,
                   help="the MDE target plan-study was run at to choose this design (default: the accuracy margin)")
    p.add_argument("--bench-dir", default=None,
                   help="the study's Snakemake benchmark files: a generated plan-study section")
    p.add_argument("--gpu-config", default=None, help="a GPU study config to price (with --gpu-tokens-per-s)")
    p.add_argument("--gpu-tokens-per-s", type=float, default=None, help="measured GPU pretraining throughput")
    p.add_argument("--gpu-tokens-per-step", type=int, default=None, help="tokens per step of that measurement")

    return lazy("studydoc", "study_doc")


@subcommand("plan-study", "designs (pretraining seeds x fine-tuning seeds x cells) that reach a target minimum "
            "detectable effect, cheapest first, from a finished study's report and benchmark files")
def _plan_study(p):
    p.add_argument("--report", default="results/report", help="the study's report folder (runs.tsv)")
    p.add_argument("--bench-dir", default="results/benchmarks", help="the study's Snakemake benchmark files")
    p.add_argument("--target", type=float, default=None, help="the MDE to reach, e.g. 0.02 (accuracy)")
    p.add_argument("--scheme", default="genemask")
    p.add_argument("--reference", default="dnabert")
    p.add_argument("--metric", default="accuracy")
    p.add_argument("--step", type=int, default=None, help="pretraining step (default: the largest both have)")
    p.add_argument("--steps", type=int, default=None, help="a pretraining budget to price (default: the study's)")
    p.add_argument("--gpu-tokens-per-s", type=float, default=None,
                   help="measured GPU pretraining throughput: price pretraining in GPU-hours")
    p.add_argument("--tokens-per-step", type=int, default=None, help="tokens of one pretraining step on the GPU")
    p.add_argument("--cells", type=int, nargs="*", default=[], help="numbers of task x shot cells to plan for")
    from .probe import PROTOCOLS

    p.add_argument("--price-config", default=None, metavar="CONFIG",
                   help="instead: what this study config costs (pretraining in GPU-hours at --gpu-tokens-per-s) "
                        "and the MDE its design would reach with this report's variance components")
    p.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0],
                   help="plan for the fine-tuning or the probe runs of the report")

    return lazy("planstudy", "plan_study_cli")


@subcommand("probe", "frozen-representation probes of one pretrained model on one task: embed once, fit a "
            "logistic regression per shot and seed, score the test rows (one JSON)")
def _probe(p):
    p.add_argument("--model", required=True, help="pretrained model folder")
    p.add_argument("--task", required=True)
    p.add_argument("--scheme", required=True)
    p.add_argument("--num-labels", type=int, required=True)
    p.add_argument("--shot", dest="shots", nargs=3, action="append", required=True, metavar=("K", "TRAIN", "TEST"),
                   help="a shot size and its cleaned train/test TSVs (genemask task-data); repeat per shot")
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="one probe per seed (cross-validation folds)")
    p.add_argument("--batch-size", type=int, default=D("probe.batch_size"), help="sequences per forward pass")
    p.add_argument("--max-train-rows", type=int, default=D("probe.max_train_rows"),
                   help="probe at most this many training rows of a shot (a fixed stratified subsample; 0 = all)")
    from .defaults import node

    p.add_argument("--device", choices=node("predict.device")["enum"], default=D("predict.device"))
    _bf16_arg(p)
    p.add_argument("-o", "--output", required=True, help="JSON {runs: [...]}")

    return lazy("probe", "probe_runs")


@subcommand("bench-doc", "write docs/performance.md from the benchmarks' captured output (generated by make bench)")
def _bench_doc(p):
    p.add_argument("files", nargs="+", metavar="OUTPUT.txt",
                   help="one benchmark's printed output each; a first line '$ CMD' names its command")
    p.add_argument("-o", "--output", default="docs/performance.md")

    return lazy("benchdoc", "bench_doc")


@subcommand("check-config", "check config files as plain YAML (no YTE, no Snakemake): schema, names, paths, "
            "cross-checks; use it on a config you did not write before giving it to snakemake")
def _check_config(p):
    p.add_argument("configs", nargs="+", metavar="CONFIG.yaml", help="merged in order, as snakemake --configfile")
    return lambda: check_config


def check_config(configs: list[str]) -> int:
    """`genemask check-config`: resolve the files (plan.check_config_files) and say what they plan."""
    from .plan import check_config_files, chunks, runs

    cfg = check_config_files(configs)
    print(f"{' + '.join(configs)}: ok ({len(chunks(cfg))} chunks, {len(cfg['pretrain']['schemes'])} "
          f"schemes, {len(runs(cfg))} fine-tuning runs)")
    return 0


@subcommand("timings", "time per pipeline stage from Snakemake benchmark files")
def _timings(p):
    p.add_argument("bench_dir", help="results/benchmarks")

    return lazy("timings", "timings_cli")


# ---- benchmarks (bench/) --------------------------------------------------------------------
@subcommand("bench", "benchmarks that print side-by-side comparisons")
def _bench(p):
    bsub = p.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("ngrams", help="our counting vs KMC")
    b.add_argument("fasta")
    b.add_argument("--max-order", type=int, default=10)
    b = bsub.add_parser("masking", help="masking schemes vs Hugging Face collator vs loop")
    b.add_argument("--ranking", default=None)
    b = bsub.add_parser("finetune", help="fixed cost per fine-tuning run (one process per run vs the warm "
                        "worker), our fine-tuning step vs a bare Hugging Face loop, and our step in float32 vs bf16")
    b.add_argument("--runs", type=int, default=24, help="runs through the warm worker (its start is amortised)")
    b.add_argument("--steps", type=int, default=40, help="steps per timing round of each loop")
    b.add_argument("--rounds", type=int, default=25, help="interleaved timing rounds of each loop")
    b = bsub.add_parser("precision", help="fine-tuning in bf16 vs float32, paired, on the finished runs of a results "
                        "folder: each selected run fine-tuned again with bf16: true; differences with 95%% CIs, times")
    b.add_argument("results", help="a results folder (finetune/, models/, tasks/; nothing in it is written)")
    b.add_argument("--tasks", nargs="+", default=None)
    b.add_argument("--shots", type=int, nargs="+", default=None)
    b.add_argument("--schemes", nargs="+", default=None, help="schemes (a baseline: `baseline`)")
    b.add_argument("--pretrain-seeds", type=int, nargs="+", default=None)
    b.add_argument("--steps", type=int, nargs="+", default=None, help="pretraining steps")
    b.add_argument("--seeds", type=int, nargs="+", default=None, help="fine-tuning seeds")
    b.add_argument("--settings", default=None, help="fine-tuning settings (JSON or JSON/YAML file; default: each "
                   "run's own command line from .snakemake/metadata beside RESULTS, else the schema's defaults)")
    b.add_argument("--fp32", choices=["stored", "rerun"], default="stored",
                   help="pair with the stored float32 runs, or rerun them too (checks them, times both alike)")
    b.add_argument("--jobs", type=int, default=1, help="processes (each run keeps its own thread count)")
    b.add_argument("--threads", type=int, default=None, help="threads per run (default: the stored run's)")
    b.add_argument("--margin", type=float, default=0.005, help="|mean difference| deemed no change")
    b.add_argument("-o", "--output", required=True,
                   help="TSV, one row per run; the new runs' JSONs go to <output stem>.runs/ (reused by a rerun)")
    b = bsub.add_parser("train", help="the device's matmul peak, then tokens/s and MFU of a bare Hugging Face "
                        "loop and of our pretraining step in float32, bf16 and compiled")
    b.add_argument("--model-config", default=None, help="resources/models/*.json (default: logo.json)")
    b.add_argument("--steps", type=int, default=4, help="timed steps per loop (after one warm-up step)")
    b.add_argument("--threads", type=int, default=1, help="CPU threads (the issue's goals are per core)")
    return lambda: bench


def bench(**args) -> int:
    """`genemask bench NAME`: the benchmark modules read their arguments as a namespace."""
    import argparse

    from .bench import run

    return run(argparse.Namespace(**args))


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's status for SIGINT, no traceback
        print("genemask: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from . import worker

    if argv and worker.enabled(argv[0]):  # GENEMASK_WORKER=1: run in a child of the warm server,
        rc = worker.run(argv)              # which parses the arguments (and reports their errors)
        if rc is not None:
            return rc
    args = build_parser().parse_args(argv)
    try:
        from .util import guard_inputs

        with guard_inputs(input_paths(args)):  # no output may replace an input or a folder holding one
            check_outputs(args)
            rc = dispatch(args)
        return rc if isinstance(rc, int) else 0
    except GeneMaskError as e:
        print(f"genemask {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permission denied, read-only file system, ...: the system's fault
        print(f"genemask {args.command}: error: {_os_error(e, args)}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"genemask {args.command}: error: out of memory (give the job more memory: the rule's "
              f"mem_mb, or a smaller chunk_size)", file=sys.stderr)
        return 1
    except Exception as e:  # a library's own error type for a failed write (safetensors, torch.save)
        if "No space left on device" not in str(e) and "os error 28" not in str(e):
            raise
        import errno
        import os

        print(f"genemask {args.command}: error: "
              f"{_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), args)}", file=sys.stderr)
        return 1


OUTPUT_ARGS = ("output", "outdir", "out_train", "out_test", "out_stats", "save_model", "plot", "bedgraph", "seqlets",
               "reliance", "logos", "motifs_out", "reliance_out")
FOLDER_OUTPUTS = {("corpus", "output"): CORPUS, ("pretrain", "output"): PRETRAINING_RUN,
                  ("finetune", "save_model"): CLASSIFIER, ("baseline", "output"): BASELINE_MODEL,
                  ("aggregate", "outdir"): RECEIVING}  # (command, argument) -> the folder's kind


def check_outputs(args: argparse.Namespace) -> None:
    """util.check_output_target for every output of the command, before it does any work."""
    for a in OUTPUT_ARGS:
        if getattr(args, a, None):
            folder = (args.command, a) in FOLDER_OUTPUTS
            check_output_target(getattr(args, a), is_dir=folder, kind=FOLDER_OUTPUTS.get((args.command, a), "output"))


IN_PLACE_ARGS = ("readme",)  # files a command edits in place (study-doc: the README between its markers)


def input_paths(args: argparse.Namespace) -> list[str]:
    """Every argument value (or list item) that names an existing file or folder and is neither an
    output nor a file the command edits in place."""
    import os

    found = []
    for name, value in vars(args).items():
        if name in OUTPUT_ARGS or name in IN_PLACE_ARGS:
            continue
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, str) and v and len(v) < 4096 and "\0" not in v and os.path.lexists(v):
                found.append(v)
    return found


def _os_error(e: OSError, args: argparse.Namespace) -> str:
    """'<file>: <strerror>' for an OSError; a write that names no file (numpy, zipfile, a stream)
    is laid on the command's output, which is where such writes go."""
    import errno
    import os
    import re

    from .util import write_failure

    outs = [str(getattr(args, a)) for a in OUTPUT_ARGS if getattr(args, a, None)]
    if e.errno is None and outs:  # a library's write error without errno: a full disk, or say what it said
        e = write_failure(outs[0], str(e))
    what = e.strerror or str(e) or type(e).__name__
    if e.errno and not e.strerror:
        what = os.strerror(e.errno)
    where = e.filename
    if where is not None:  # name the output, not its temporary twin (util.atomic_output: .NAME.tmp-PID)
        where = re.sub(r"(^|/)\.([^/]+)\.tmp-\d+", r"\1\2", os.fsdecode(where))
    elif outs:
        where = "writing " + " / ".join(outs)
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    if e.errno == errno.ENOSPC:
        what += " (disk full: free space or point results/ elsewhere; no partial output was kept)"
    return f"{where}: {what}" if where is not None else what


if __name__ == "__main__":
    sys.exit(main())
