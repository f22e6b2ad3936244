"""`genemask mask-stats`: what a masking scheme does to real sequence, as key=value lines.

Masks the first N-free 511-bp pieces of a FASTA with one scheme (`masking.make_masker`) and prints
the masked fraction, the mean span, and the NPMI ranks of the masked k-mers against all k-mers.
The masking itself lives in masking.py; this is the command that looks at it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import kmers
from .defaults import default as _schema_default
from .genome import read_sequences
from .masking import DEFAULT_K, OPTIONS, cm_step_share, curriculum_share, make_masker, real_positions, row_ends
from .npmi import load_ranking
from .tokenizer import encode_sequences
from .util import GeneMaskError

DATA_A = Path("genemask") / "Data-A_norm-pmi-score-ranking.csv"


def default_ranking_path() -> Path:
    mirror = os.environ.get("GENEMASK_MIRROR")
    if not mirror:
        raise GeneMaskError("no NPMI ranking: pass --ranking or set GENEMASK_MIRROR to the data mirror "
                            f"(which holds {DATA_A})")
    path = Path(mirror) / DATA_A
    if not path.exists():
        raise GeneMaskError(f"{path}: published ranking not found in $GENEMASK_MIRROR (pass --ranking)")
    return path


def cut_pieces(fasta, n_seqs: int, length: int = _schema_default("corpus.max_bp")) -> list[bytes]:
    """Consecutive upper-cased `length`-bp pieces free of non-ACGT letters, first n_seqs in file order."""
    pieces: list[bytes] = []
    for _, seq in read_sequences(fasta):
        seq = seq.upper()
        good = kmers.encode(seq) != 255
        # ACGT runs: starts/ends from the edges of `good`
        edges = np.flatnonzero(np.diff(np.concatenate([[0], good.view(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            for s in range(a, b - length + 1, length):
                pieces.append(seq[s : s + length])
                if len(pieces) >= n_seqs:
                    return pieces
    return pieces


def parse_options(items) -> dict:
    """`KEY=VALUE` strings (CLI `--option`) -> masking options, values read as YAML scalars."""
    import yaml

    out = {}
    for text in items:
        key, sep, val = str(text).partition("=")
        if not sep or not key:
            raise GeneMaskError(f"--option {text!r}: expected KEY=VALUE (keys: {', '.join(OPTIONS)})")
        out[key.strip()] = yaml.safe_load(val)
    return out


def mask_stats_cli(fasta, scheme: str, ranking=None, k: int = DEFAULT_K, n_seqs: int = 2000, seed: int = 0,
                   step: int = 0, total_steps: int = 1, batch_size: int = 256, options=()) -> int:
    """`genemask mask-stats`: mask real 511-bp pieces of `fasta` with `scheme`, print key=value lines.

    Pieces: the first `n_seqs` consecutive 511-bp (506-token) stretches free of N, upper-cased.
    Printed: scheme, k, ranking, n_seqs, n_tokens, masked_fraction, mean_span (mean length of the
    masked runs), mean_rank_masked / mean_rank_all (mean NPMI rank of the masked k-mers / of all
    k-mers; 1 = highest NPMI), top_decile_masked / top_decile_all (share of k-mers in the ranking's
    top 10 %), for curriculum / cm_step the schedule value s at `step` (`curriculum_share` /
    `cm_step_share`), and for cm_step / cm_gems `global_pmi_batches` (how many of the `batches` of
    `batch_size` pieces were masked by the global_pmi branch; cm_step tosses one coin per batch, as per
    micro-batch in training). cm_gems has no validation signal here, so it shows its pre-switch
    (genemask) branch unless `--option switch_at=N` with N <= step forces the switch. Ranking:
    `ranking`, else the published Data-A table in $GENEMASK_MIRROR, else a GeneMaskError. options:
    `KEY=VALUE` masking options (`make_masker`), printed back as `option.KEY=VALUE`.
    """
    if n_seqs < 1:
        raise GeneMaskError(f"--n-seqs={n_seqs}: must be >= 1")
    rank_path = Path(ranking) if ranking is not None else default_ranking_path()
    rank_arr = load_ranking(rank_path, k=k)
    opts = parse_options(options)
    masker = make_masker(scheme, k=k, ranking=rank_arr, **opts)
    pieces = cut_pieces(fasta, n_seqs)
    if not pieces:
        raise GeneMaskError(f"{fasta}: no 511-bp stretch free of N in the file")
    gen = torch.Generator().manual_seed(seed)
    ranks = masker.ranks("cpu")
    top = 4**k // 10  # top decile of the ranking
    tot = {"masked": 0.0, "real": 0.0, "runs": 0.0, "rank_m": 0.0, "n_m": 0.0, "rank_a": 0.0, "n_a": 0.0,
           "top_m": 0.0, "top_a": 0.0}
    n_batches = n_global = 0
    for i in range(0, len(pieces), batch_size):
        ids = encode_sequences(k, [p.decode() for p in pieces[i : i + batch_size]])["input_ids"]
        end = row_ends(ids)
        draws = masker.draw(ids, gen, end, step=step, total_steps=total_steps)
        masked = masker.positions_from_draws(ids, draws, step, total_steps, end)
        n_batches += 1
        n_global += draws.branch == "global_pmi"
        real, _ = real_positions(ids)
        is_kmer = real & (ids >= kmers.N_SPECIAL)
        starts = masked.clone()
        starts[:, 1:] &= ~masked[:, :-1]
        r = ranks[ids].double()
        tot["masked"] += float(masked.sum())
        tot["real"] += float(real.sum())
        tot["runs"] += float(starts.sum())
        tot["rank_m"] += float(r[masked & is_kmer].sum())
        tot["n_m"] += float((masked & is_kmer).sum())
        tot["rank_a"] += float(r[is_kmer].sum())
        tot["n_a"] += float(is_kmer.sum())
        tot["top_m"] += float((r[masked & is_kmer] <= top).sum())
        tot["top_a"] += float((r[is_kmer] <= top).sum())
    out = {
        "scheme": scheme, "k": k, "ranking": str(rank_path), "n_seqs": len(pieces), "n_tokens": int(tot["real"]),
        "masked_fraction": f"{tot['masked'] / max(tot['real'], 1):.4f}",
        "mean_span": f"{tot['masked'] / max(tot['runs'], 1):.2f}",
        "mean_rank_masked": f"{tot['rank_m'] / max(tot['n_m'], 1):.1f}",
        "mean_rank_all": f"{tot['rank_a'] / max(tot['n_a'], 1):.1f}",
        "top_decile_masked": f"{tot['top_m'] / max(tot['n_m'], 1):.4f}",
        "top_decile_all": f"{tot['top_a'] / max(tot['n_a'], 1):.4f}",
    }
    out.update({f"option.{key}": v for key, v in opts.items()})
    if scheme == "curriculum":
        out["curriculum_share"] = curriculum_share(step, total_steps, masker.ramp)
    if scheme == "cm_step":
        out["cm_step_share"] = cm_step_share(step, total_steps)
    if scheme in ("cm_step", "cm_gems"):
        out["batches"], out["global_pmi_batches"] = n_batches, n_global
    for key, v in out.items():
        print(f"{key}={v}")
    return 0
