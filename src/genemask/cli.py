"""The `genemask` command: one thin subcommand per pipeline stage.

Each subcommand parses arguments and calls one function of the package; the logic lives in the
modules. Errors caused by input or config (GeneMaskError) print as one line and exit with status 2;
Ctrl-C prints `genemask: interrupted` and exits 130.
Imports are lazy so that `genemask --help` and light commands start fast.
"""
from __future__ import annotations

import functools
import sys

from .util import BASELINE_MODEL, CLASSIFIER, CORPUS, PRETRAINING_RUN, RECEIVING, GeneMaskError, check_output_target

TYPE_CHECKING = False  # typing's constant without importing typing (10 ms of a worker client's start)
if TYPE_CHECKING:
    import argparse


def _p(sub, name, help):
    return sub.add_parser(name, help=help, description=help)


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    # Built once per process (the warm worker builds it before it forks, so its runs reuse it).
    # Imported here, not at the top: a `genemask finetune` through the warm worker never builds a
    # parser in the calling process (main hands its argv over first), so it does not pay for them.
    import argparse

    from .defaults import default as D  # the config schema's defaults, so a command alone runs as the pipeline
    from .defaults import defaults as D_ALL  # the defaults of a mapping's keys
    from .defaults import node as D_NODE  # a key's schema (enum choices)

    ap = argparse.ArgumentParser(prog="genemask", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    # ---- sources / genome (sources.py, genome.py) -------------------------------------------
    p = _p(sub, "fetch", "download a declared source (or copy it from $GENEMASK_MIRROR) and verify it: pinned "
           "sha256, else the sha256 locked in <output>.sha256, else a published checksum list (then locked)")
    p.add_argument("--url", default=None, help="download URL (none: the file comes from the mirror only)")
    p.add_argument("--origin", default=None, help="where a URL-less source comes from (for the error message)")
    p.add_argument("--sha256", default=None, help="pinned sha256 (wins over lock and list)")
    p.add_argument("--mirror-path", required=True, help="path of the file inside a mirror folder")
    p.add_argument("--checksums-url", default=None, help="published checksum list (md5sum format) beside the file")
    p.add_argument("--checksums-algorithm", default="md5", help="digest the list holds (md5, sha1, sha256, sha512)")
    p.add_argument("--checksums-path", default=None, help="path of the list inside a mirror folder")
    p.add_argument("--mirror", default=None, help="mirror folder (default: $GENEMASK_MIRROR)")
    p.add_argument("-o", "--output", required=True)

    p = _p(sub, "index", "validate a FASTA, keep the chosen contigs, write it bgzip-compressed with .fai/.gzi")
    p.add_argument("fasta")
    p.add_argument("--contigs", nargs="*", default=None, help="contigs to keep, NAME or NAME:LENGTH (default: all)")
    p.add_argument("-o", "--output", required=True, help="output .fa.gz (bgzip)")

    p = _p(sub, "chunks", "split an indexed FASTA into contig windows, one region per line")
    p.add_argument("fasta")
    p.add_argument("--size", type=int, required=True, help="window size in bp")
    p.add_argument("--contigs", nargs="*", default=None,
                   help="contigs to plan, in this order, NAME or NAME:LENGTH (default: all, in file order)")
    p.add_argument("-o", "--output", required=True, help="TSV: chunk, contig, start, end (0-based, half-open)")

    # ---- n-grams and NPMI (ngrams.py, npmi.py) -----------------------------------------------
    p = _p(sub, "ngrams", "count overlapping n-grams of orders 1..max in a FASTA (or one region of it)")
    p.add_argument("fasta")
    p.add_argument("--region", default=None,
                   help="CHR, CHR:START-END (1-based, inclusive, as samtools) or {CHR}:START-END; "
                        "coordinates are read from the right, so names with ':' work")
    p.add_argument("--max-order", type=int, default=D("ngrams.max_order"))
    p.add_argument("-o", "--output", required=True)

    p = _p(sub, "merge", "add n-gram count files")
    p.add_argument("counts", nargs="+")
    p.add_argument("-o", "--output", required=True)

    p = _p(sub, "npmi", "score n-grams by (normalised) PMI and rank them")
    p.add_argument("counts")
    p.add_argument("--variant", choices=["paper", "levine"], default=D("npmi.variant"))
    p.add_argument("--min-count", type=int, default=D("npmi.min_count"))
    p.add_argument("-o", "--output", required=True)

    # ---- corpus (corpus.py) -------------------------------------------------------------------
    p = _p(sub, "corpus", "cut a FASTA region into pretraining pieces and write token ids (train/valid)")
    p.add_argument("fasta")
    p.add_argument("--region", default=None)
    p.add_argument("--k", type=int, default=D("corpus.k"))
    p.add_argument("--max-bp", type=int, default=D("corpus.max_bp"))
    p.add_argument("--min-bp", type=int, default=D("corpus.min_bp"))
    p.add_argument("--valid-fraction", type=float, default=D("corpus.valid_fraction"))
    p.add_argument("--seed", type=int, default=D("corpus.seed"))
    p.add_argument("-o", "--output", required=True, help="output folder (train.bin, valid.bin, index)")

    # ---- masking (maskstats.py) --------------------------------------------------------------
    p = _p(sub, "mask-stats", "masking statistics of a scheme on real sequence")
    p.add_argument("fasta")
    p.add_argument("--scheme", required=True)
    p.add_argument("--ranking", default=None, help="NPMI table (ours or Data-A); default: the published Data-A")
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--n-seqs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="masking option (p, high_rule, high_radius, ramp, mask_prob, random_prob, global_p, "
                        "threshold, switch_at, faithful); repeatable")
    p.add_argument("--step", type=int, default=0, help="training step (curriculum, cm_step, cm_gems)")
    p.add_argument("--total-steps", type=int, default=1, help="total training steps (curriculum, cm_step)")

    # ---- pretraining (pretrain.py) ------------------------------------------------------------
    p = _p(sub, "pretrain", "pretrain a masked language model with one masking scheme")
    p.add_argument("--corpus", nargs="+", required=True, help="corpus folders written by `genemask corpus`")
    p.add_argument("--model-config", required=True, help="JSON model configuration (resources/models/*.json)")
    p.add_argument("--scheme", required=True)
    p.add_argument("--ranking", default=None, help="NPMI table for genemask/curriculum/reference")
    p.add_argument("--settings", default=None, help="JSON/YAML file with training settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    p.add_argument("--save-steps", type=int, nargs="*", default=[], metavar="N",
                   help="also save the model at these steps (the last step is always saved)")
    p.add_argument("-o", "--output", required=True, help="run folder: step<N>/ Hugging Face model folders + logs")

    p = _p(sub, "baseline", "resolve an external model (folder or hub id), check its k-mer vocabulary, copy it")
    p.add_argument("--name", required=True)
    p.add_argument("--model", required=True, help="Hugging Face folder or hub id (owner/name)")
    p.add_argument("--revision", default=None)
    p.add_argument("-o", "--output", required=True)

    # ---- few-shot tasks (tasks.py, finetune.py) -----------------------------------------------
    p = _p(sub, "task-data", "clean a task's shot file and test set: raw bp, leakage removed, test subsampled")
    p.add_argument("--task", required=True)
    p.add_argument("--train", required=True, help="K-shot training file")
    p.add_argument("--test", required=True, help="test file (6-mer TSV or raw-bp CSV)")
    p.add_argument("--exclude", nargs="*", default=[], help="files whose rows are removed from the test set")
    p.add_argument("--num-labels", type=int, required=True)
    p.add_argument("--max-test", type=int, default=D("finetune.max_test"), help="subsample the test set to this many rows (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=6, help="the model's k: shorter sequences are refused")
    p.add_argument("--window-tokens", type=int, default=510,
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

    p = _p(sub, "finetune", "fine-tune a pretrained model on a K-shot set and score it on the test set")
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

    # ---- using a model (inference.py) -----------------------------------------------------------
    p = _p(sub, "predict", "class probabilities of new sequences (FASTA or TSV/CSV) from a fine-tuned classifier")
    p.add_argument("--model", required=True, help="fine-tuned classifier folder (modelfolder.save_classifier)")
    p.add_argument("input", help="FASTA (.fa/.fasta/.fna[.gz]) or table (.tsv/.csv[.gz], a sequence column)")
    p.add_argument("--stride", type=int, default=D("predict.stride"), help="tokens between window starts (default: half a window)")
    p.add_argument("--batch-size", type=int, default=D("predict.batch_size"), help="windows per forward pass")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default=D("predict.device"))
    p.add_argument("-o", "--output", required=True, help="TSV: id, prob_<label> per class, predicted")

    p = _p(sub, "embed", "per-sequence vectors of new sequences from any model folder (pretrained or fine-tuned)")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("input", help="FASTA (.fa/.fasta/.fna[.gz]) or table (.tsv/.csv[.gz], a sequence column)")
    p.add_argument("--pooling", choices=["cls", "mean"], default=D("predict.embed.pooling"))
    p.add_argument("--layer", type=int, default=D("predict.embed.layer"), help="hidden state: 0 = embeddings, 1..L layers, -1 = last")
    p.add_argument("--stride", type=int, default=D("predict.stride"), help="tokens between window starts (default: half a window)")
    p.add_argument("--batch-size", type=int, default=D("predict.batch_size"), help="windows per forward pass")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default=D("predict.device"))
    p.add_argument("-o", "--output", required=True, help=".npy (ids in <stem>.ids.txt beside it) or .parquet (columns id, embedding: list<float32>)")

    # ---- report (report.py, aggregate.py, figures.py) -----------------------------------------
    p = _p(sub, "aggregate", "collect run metrics: one TSV row per run, mean +- sd table, tests, plots")
    p.add_argument("metrics", nargs="+")
    p.add_argument("--outdir", required=True)
    p.add_argument("--missing", default=None, metavar="TSV",
                   help="settings without data, listed as 'missing' in the report (columns task, shot, reason)")
    p.add_argument("--include", nargs="*", default=[], metavar="FILE",
                   help="extra PNG/TSV files to embed in report.html (e.g. loss.png, motifs.tsv)")
    p.add_argument("--equivalence-margin", nargs="+", default=[], metavar="METRIC=MARGIN",
                   help="TOST margin of a verdict metric (default: the schema's report.equivalence_margin: "
                        + ", ".join(f"{k}={v}" for k, v in D_ALL("report.equivalence_margin").items()) + ")")

    # ---- report figures and motifs (figures.py, motifs.py) -- owned by the report engineer ------
    p = _p(sub, "plot-loss", "plot pretraining loss curves (train and validation loss vs step) of several runs")
    p.add_argument("logs", nargs="+", metavar="LOG.tsv", help="train_log.tsv files written by `genemask pretrain`")
    p.add_argument("--labels", nargs="*", default=None, help="one per log (default: the log's folder name)")
    p.add_argument("-o", "--output", required=True, help="PNG")

    p = _p(sub, "plot-mask-ranks", "plot the NPMI-rank distribution of masked tokens per masking scheme")
    p.add_argument("--stats", nargs="+", required=True, metavar="TSV",
                   help="mask_ranks.tsv files (columns rank, count) written by `genemask pretrain`")
    p.add_argument("--labels", nargs="*", default=None, help="one per stats file (default: the file's folder name)")
    p.add_argument("--ranking", default=None, help="NPMI table the ranks refer to (sets the number of ranked k-mers)")
    p.add_argument("--reference", default=None, metavar="TSV",
                   help="rank, count of all tokens (default reference: every ranked k-mer once)")
    p.add_argument("--k", type=int, default=6)
    p.add_argument("-o", "--output", required=True, help="PNG")

    p = _p(sub, "motifs", "score the top-N NPMI k-mers against JASPAR motifs (offline) and test enrichment")
    p.add_argument("--ranking", required=True, help="NPMI table (ours or the authors' Data-A CSV)")
    p.add_argument("--top", type=int, default=D("report.motifs_top"))
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--method", choices=D_NODE("report.motif_method")["enum"], default=D("report.motif_method"),
                   help="tomtom: Tomtom (memelite) q-value per k-mer and motif (default); rule: the relative-PWM-score "
                        "rule; both: both, with their overlap")
    p.add_argument("--q-threshold", type=float, default=0.05, help="Tomtom q-value for a match")
    p.add_argument("--threshold", type=float, default=0.85, help="rule: relative PWM score for a hit")
    p.add_argument("--min-ic", type=float, default=10.0, help="rule: min information content (bits) of a motif window")
    p.add_argument("--n-perm", type=int, default=10000, help="random k-mer sets for the permutation test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--release", default=None, help="JASPAR release in pyjaspar (default: the latest shipped)")
    p.add_argument("--plot", default=None, metavar="PNG")
    p.add_argument("-o", "--output", required=True, help="TSV: kmer, rank, npmi, then tomtom_matches, tomtom_motif, tomtom_p, tomtom_q, tomtom_matched "
                        "and/or rule_hits, rule_motif, rule_score")
    # ---- end of report figures and motifs ------------------------------------------------------

    p = _p(sub, "write-missing", "write missing.tsv: task x shot settings that have no data")
    p.add_argument("entries", nargs="*", metavar="TASK:SHOT")
    p.add_argument("-o", "--output", required=True)

    p = _p(sub, "study-doc", "write docs/study.md from a finished study's report folder (generated, never by hand)")
    p.add_argument("--report", default="results/report")
    p.add_argument("--config", required=True)
    p.add_argument("--command", dest="run_command", required=True, help="the exact command that ran the study")
    p.add_argument("--wall-s", type=float, default=None)
    p.add_argument("--models", default="results/models")
    p.add_argument("--timings", default=None, help="a file with `genemask timings` output")
    p.add_argument("-o", "--output", default="docs/study.md")
    p.add_argument("--readme", default=None, help="also quote the headline verdict line in this README (its markers)")
    p = _p(sub, "bench-doc", "write docs/performance.md from the benchmarks' captured output (generated by make bench)")
    p.add_argument("files", nargs="+", metavar="OUTPUT.txt",
                   help="one benchmark's printed output each; a first line '$ CMD' names its command")
    p.add_argument("-o", "--output", default="docs/performance.md")
    p = _p(sub, "check-config", "check config files as plain YAML (no YTE, no Snakemake): schema, names, paths, "
           "cross-checks; use it on a config you did not write before giving it to snakemake")
    p.add_argument("configs", nargs="+", metavar="CONFIG.yaml", help="merged in order, as snakemake --configfile")

    p = _p(sub, "timings", "time per pipeline stage from Snakemake benchmark files")
    p.add_argument("bench_dir", help="results/benchmarks")

    # ---- benchmarks (bench.py) ----------------------------------------------------------------
    p = _p(sub, "bench", "benchmarks that print side-by-side comparisons")
    bsub = p.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("ngrams", help="our counting vs KMC")
    b.add_argument("fasta")
    b.add_argument("--max-order", type=int, default=10)
    b = bsub.add_parser("masking", help="masking schemes vs Hugging Face collator vs loop")
    b.add_argument("--ranking", default=None)
    b = bsub.add_parser("finetune", help="fixed cost per fine-tuning run (one process per run vs the warm "
                        "worker) and our fine-tuning step vs a bare Hugging Face loop")
    b.add_argument("--runs", type=int, default=24, help="runs through the warm worker (its start is amortised)")
    b.add_argument("--steps", type=int, default=40, help="steps per timing round of each loop")
    b.add_argument("--rounds", type=int, default=25, help="interleaved timing rounds of each loop")
    b = bsub.add_parser("train", help="our training loop vs a bare Hugging Face loop")
    b.add_argument("--model-config", default=None)
    b.add_argument("--steps", type=int, default=10)
    return ap


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


OUTPUT_ARGS = ("output", "outdir", "out_train", "out_test", "out_stats", "save_model", "plot")
FOLDER_OUTPUTS = {("corpus", "output"): CORPUS, ("pretrain", "output"): PRETRAINING_RUN,
                  ("finetune", "save_model"): CLASSIFIER, ("baseline", "output"): BASELINE_MODEL,
                  ("aggregate", "outdir"): RECEIVING}  # (command, argument) -> the folder's kind


def check_outputs(args: argparse.Namespace) -> None:
    """util.check_output_target for every output of the command, before it does any work."""
    for a in OUTPUT_ARGS:
        if getattr(args, a, None):
            folder = (args.command, a) in FOLDER_OUTPUTS
            check_output_target(getattr(args, a), is_dir=folder, kind=FOLDER_OUTPUTS.get((args.command, a), "output"))


def input_paths(args: argparse.Namespace) -> list[str]:
    """Every argument value (or list item) that names an existing file or folder and is not an output."""
    import os

    found = []
    for name, value in vars(args).items():
        if name in OUTPUT_ARGS:
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


def dispatch(args: argparse.Namespace):
    c = args.command
    if c == "fetch":
        from .sources import fetch

        checksums = None
        if args.checksums_url:
            if not args.checksums_path:
                raise GeneMaskError("--checksums-url needs --checksums-path (the list's path inside a mirror folder)")
            checksums = {"url": args.checksums_url, "algorithm": args.checksums_algorithm, "path": args.checksums_path}
        return fetch(args.url, args.sha256, args.mirror_path, args.output, mirror=args.mirror, checksums=checksums,
                     origin=args.origin)
    if c == "index":
        from .genome import index_fasta

        return index_fasta(args.fasta, args.output, contigs=args.contigs)
    if c == "chunks":
        from .genome import write_chunks

        return write_chunks(args.fasta, args.output, size=args.size, contigs=args.contigs)
    if c == "ngrams":
        from .ngrams import count_fasta_to_file

        return count_fasta_to_file(args.fasta, args.output, region=args.region, max_order=args.max_order)
    if c == "merge":
        from .ngrams import merge_files

        return merge_files(args.counts, args.output)
    if c == "npmi":
        from .npmi import npmi_file

        return npmi_file(args.counts, args.output, variant=args.variant, min_count=args.min_count)
    if c == "corpus":
        from .corpus import build_corpus

        return build_corpus(
            args.fasta, args.output, region=args.region, k=args.k, max_bp=args.max_bp, min_bp=args.min_bp,
            valid_fraction=args.valid_fraction, seed=args.seed,
        )
    if c == "mask-stats":
        from .maskstats import mask_stats_cli

        return mask_stats_cli(args.fasta, scheme=args.scheme, ranking=args.ranking, k=args.k,
                              n_seqs=args.n_seqs, seed=args.seed, step=args.step, total_steps=args.total_steps,
                              options=args.option)
    if c == "pretrain":
        from .pretrain import pretrain_cli

        return pretrain_cli(args.corpus, args.model_config, args.scheme, args.output, ranking=args.ranking,
                            settings=args.settings, overrides=args.set, save_steps=args.save_steps)
    if c == "baseline":
        from .baselines import prepare_baseline

        return prepare_baseline(args.name, args.model, args.output, revision=args.revision)
    if c == "task-data":
        from .tasks import prepare_task_data

        return prepare_task_data(
            task=args.task, train=args.train, test=args.test, exclude=args.exclude, num_labels=args.num_labels,
            max_test=args.max_test, seed=args.seed, out_train=args.out_train, out_test=args.out_test,
            out_stats=args.out_stats, k=args.k, window_tokens=args.window_tokens, draw=args.draw,
            draw_seed=args.draw_seed, label_names=args.label_names, on_conflict=args.on_conflict,
        )
    if c == "finetune":
        from .finetune import finetune_cli

        return finetune_cli(
            model=args.model, train=args.train, test=args.test, task=args.task, shot=args.shot, seed=args.seed,
            scheme=args.scheme, num_labels=args.num_labels, settings=args.settings, output=args.output,
            save_model=args.save_model,
        )
    if c == "predict":
        from .inference import predict_cli

        return predict_cli(args.model, args.input, args.output, stride=args.stride, batch_size=args.batch_size,
                           device=args.device)
    if c == "embed":
        from .inference import embed_cli

        return embed_cli(args.model, args.input, args.output, pooling=args.pooling, layer=args.layer,
                         stride=args.stride, batch_size=args.batch_size, device=args.device)
    if c == "aggregate":
        from .aggregate import aggregate_cli

        return aggregate_cli(args.metrics, args.outdir, expected=args.missing, include=args.include,
                             margins=args.equivalence_margin)
    # ---- report figures and motifs (figures.py, motifs.py) -----------------------------------
    if c == "plot-loss":
        from .figures import plot_loss

        return plot_loss(args.logs, args.labels, args.output)
    if c == "plot-mask-ranks":
        from .figures import plot_mask_ranks_cli

        return plot_mask_ranks_cli(args.stats, args.output, labels=args.labels, ranking=args.ranking,
                                   reference=args.reference, k=args.k)
    if c == "motifs":
        from .motifs import motifs_cli

        return motifs_cli(args.ranking, args.top, args.output, plot=args.plot, k=args.k, method=args.method,
                          threshold=args.threshold, min_ic=args.min_ic, q_threshold=args.q_threshold,
                          n_perm=args.n_perm, seed=args.seed, release=args.release)
    # ---- end of report figures and motifs ------------------------------------------------------
    if c == "write-missing":
        from .plan import write_missing

        return write_missing(args.entries, args.output)
    if c == "study-doc":
        from .studydoc import study_doc

        return study_doc(args.report, args.config, args.output, args.run_command, args.wall_s, models=args.models,
                         timings=args.timings, readme=args.readme)
    if c == "bench-doc":
        from .benchdoc import bench_doc

        return bench_doc(args.files, args.output)
    if c == "check-config":
        from .plan import check_config_files, chunks, runs

        cfg = check_config_files(args.configs)
        print(f"{' + '.join(args.configs)}: ok ({len(chunks(cfg))} chunks, {len(cfg['pretrain']['schemes'])} "
              f"schemes, {len(runs(cfg))} fine-tuning runs)")
        return 0
    if c == "timings":
        from .timings import timings_cli

        return timings_cli(args.bench_dir)
    if c == "bench":
        from .bench import run

        return run(args)
    raise AssertionError(c)


if __name__ == "__main__":
    sys.exit(main())
