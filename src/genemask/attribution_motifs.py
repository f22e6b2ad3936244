"""Seqlets and motifs from per-base attributions (`genemask explain-motifs`).

Input: one or more `.npz` files of `genemask explain` (genemask.explain: `score` [n, L] the per-base
attribution, `centred` [n, 4, L] the hypothetical contributions, rows A C G T, NaN past each
record's end; `sequence`, `ids`, `lengths`). Several files are pooled (one motif set from all their
records); they must explain the same target class with the same quantity.

Seqlets (our own caller, TF-MoDISco's idea with a simpler null):

* Smoothing: the signed sum of `score` over every window of `window` bp (default 10) that lies, with
  `flank` bp (default 5) on each side, inside its record: a seqlet is the window plus its flanks,
  `window + 2 flank` bp (20), fixed width.
* Null: for each sign, the window sums of that sign are taken as the positive half of a Laplace(0, b)
  (|sum| ~ Exponential(b)), with b from their lower quartile (b = Q25 / ln(4/3)): a quantile well
  below the median, so that up to about three windows in four may hold signal before b grows
  (in a task whose every record holds a motif, a third or more of the windows overlap one). A
  window's p-value is exp(-|sum| / b) of its sign; q-values are Benjamini-Hochberg over every window
  of every record (both signs); windows with q <= `fdr` (default 0.05) pass. Window sums of many
  bases are closer to normal than to Laplace in the tails, so the Laplace null is conservative (pure
  noise gives no seqlets: tests/test_attribution_motifs.py). TF-MoDISco instead fits its Laplace to
  the windows at the records' ends and thresholds by isotonic regression against that null; our
  records can hold a motif anywhere, ends included, so the scale comes from the bulk instead.
* Non-overlapping: passing windows, largest |sum| first, each taken unless its seqlet overlaps one
  already taken in the same record.

Motifs: modisco-lite (`modiscolite` 3.0.0, pinned; the Kundaje lab's TF-MoDISco reimplementation)
clusters the seqlets of each sign (positive: bases that raise the target class's log-odds; negative:
bases that lower it) when a sign has at least `min_seqlets` (default 20) seqlets:
`modiscolite.tfmodisco.seqlets_to_patterns` on our seqlets, with one-hot sequences and the `centred`
arrays as hypothetical contributions (contributions = one-hot x hypothetical, as `TFMoDISco` makes
them); patterns trimmed to the seqlet width with no flank added (an added flank drops every seqlet
within that many bp of its record's end: most of them in records of 60-100 bp), clusters of at
least `min_seqlets` seqlets kept, modisco-lite's defaults otherwise (50 Leiden runs of fixed seeds:
deterministic). `TFMoDISco` itself is not called: it calls seqlets with its own null, and the
seqlets table and the reliance below would then describe other seqlets than the motifs were built
from. A sign with fewer seqlets gets no motifs (said on stderr).

A motif's letter-probability matrix (the mean one-hot of its aligned seqlets) is trimmed to the
columns from the first to the last that hold >= `trim_bits` (0.5) bits. modisco-lite's report trims
by contribution (columns >= 0.3 of the largest |contribution|) instead; ISM of a k-mer model puts
the contribution on a few bases of a site (the 6-mers the model keys on) while the aligned seqlets
still hold the whole site, so that trim cut a learnt 15-bp CTCF site to 6 bp and another to 2 bp
(tests/test_attribution_motifs.py's task). `consensus` is the most probable base per column, upper
case where the column holds >= 1 bit. Each motif is compared with the JASPAR CORE vertebrate
matrices (pyjaspar, offline) by Tomtom (memelite; motifs.tomtom_jaspar): the best match by p-value,
its Benjamini-Hochberg q-value over the JASPAR matrices of that motif (n_jaspar_matches: how many
have q <= the threshold), and `matched` = q <= `q_threshold` (the config's
report.motif_q_threshold, 0.05).

A seqlet belongs to the motif whose aligned seqlet (modisco-lite moves seqlets while aligning them)
overlaps it most in the same record (`strand`: - where the motif holds it reverse-complemented).
Motif reliance of a record: the share of its total |score| (all its bases) inside its seqlets that
belong to matched motifs; `seqlet_share` the same for all its seqlets.

Outputs (written together, atomically: all or none): `-o` motifs TSV (motif, attribution sign,
n_seqlets, width, consensus, jaspar_id, jaspar_name, p, q, matched, n_jaspar_matches, strand);
`--seqlets` TSV (source, id, start, end: 0-based half-open in the record, strand, attribution,
window_sum, q, mass = sum |score| over the seqlet, motif, matched); `--reliance` TSV (source, id,
length, total_mass, seqlet_mass, matched_mass, n_seqlets, n_matched_seqlets, seqlet_share,
reliance); `--logos` PNG: one row per motif, its logo (information content) beside its best JASPAR
match's (on the strand Tomtom aligned).
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .defaults import defaults
from .util import GeneMaskError, atomic_output

TYPE_CHECKING = False  # typing's constant without importing typing
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
# numpy and pandas are imported inside the functions: the CLI's parser reads DEFAULTS from here, and
# every genemask command builds that parser.

ALPHABET = "ACGT"  # rows of the explain arrays and columns of the letter-probability matrices here
# the seqlet settings' defaults are the schema's explain section (their one home); trim_bits is ours
DEFAULTS = {**{k: v for k, v in defaults("explain").items() if k in ("window", "flank", "fdr", "min_seqlets")},
            "trim_bits": 0.5}
NULL_QUANTILE = 0.25  # the quantile of |window sums| that sets the Laplace scale
SIGN_NAME = {1: "positive", -1: "negative"}


@dataclass
class Attributions:
    """The records of one or more explain .npz files, pooled (padded to the longest)."""

    source: list[str]  # the file each record came from
    ids: list[str]
    sequence: list[str]
    lengths: np.ndarray  # int64 [n]
    score: np.ndarray  # float64 [n, L], 0 past each end
    centred: np.ndarray  # float32 [n, 4, L] (rows A C G T), 0 past each end
    target_class: int
    target_label: str
    provenance: dict  # source -> its classifier's run (explain.PROVENANCE keys), as stored in the .npz


def load_attributions(paths: list[str]) -> Attributions:
    """Read and pool explain .npz files; one-line GeneMaskError for a file that is not one, or files
    that explain different classes or quantities."""
    import numpy as np

    from .explain import PROVENANCE

    parts, seen = [], None
    for path in paths:
        try:
            with np.load(path) as z:
                d = {key: z[key] for key in ("ids", "sequence", "lengths", "score", "centred", "target_class",
                                             "quantity", "alphabet")}
                d["target_label"] = str(z["target_label"]) if "target_label" in z.files else ""
                d["provenance"] = {key: z[key].item() if key in z.files else default
                                   for key, default in PROVENANCE.items()}
        except KeyError as e:
            raise GeneMaskError(f"{path}: not a genemask explain .npz (no {e.args[0]})") from None
        except (OSError, ValueError) as e:
            raise GeneMaskError(f"{path}: cannot read as .npz ({e})") from None
        if str(d["alphabet"]) != ALPHABET:
            raise GeneMaskError(f"{path}: alphabet {str(d['alphabet'])!r}, expected {ALPHABET!r}")
        what = (int(d["target_class"]), str(d["quantity"]))
        if seen is not None and what != seen[1]:
            raise GeneMaskError(f"{path}: explains class {what[0]} ({what[1]}) but {seen[0]} explains class "
                                f"{seen[1][0]} ({seen[1][1]}); pool files of one target class")
        seen = seen or (path, what)
        parts.append((str(path), d))
    width = max(int(d["score"].shape[1]) for _, d in parts)
    score = np.concatenate([np.pad(d["score"].astype(np.float64), ((0, 0), (0, width - d["score"].shape[1])))
                            for _, d in parts])
    centred = np.concatenate([np.pad(d["centred"], ((0, 0), (0, 0), (0, width - d["centred"].shape[2])))
                              for _, d in parts])
    return Attributions(
        source=[p for p, d in parts for _ in range(len(d["ids"]))],
        ids=[str(x) for _, d in parts for x in d["ids"]], sequence=[str(x) for _, d in parts for x in d["sequence"]],
        lengths=np.concatenate([d["lengths"].astype(np.int64) for _, d in parts]),
        score=np.nan_to_num(score, nan=0.0), centred=np.nan_to_num(centred, nan=0.0).astype(np.float32),
        target_class=seen[1][0], target_label=parts[0][1]["target_label"],
        provenance={p: d["provenance"] for p, d in parts})


# ---------------------------------------------------------------------------------------------
# seqlets
# ---------------------------------------------------------------------------------------------
def window_sums(score: np.ndarray, lengths: np.ndarray, window: int, flank: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums [n, L-window+1]: the signed sum of score over the window starting at each base;
    valid: bool, the window and its flanks lie inside the record)."""
    import numpy as np
    n, width = score.shape
    if width < window:
        return np.zeros((n, 0)), np.zeros((n, 0), dtype=bool)
    cs = np.concatenate([np.zeros((n, 1)), np.cumsum(score, axis=1)], axis=1)
    sums = cs[:, window:] - cs[:, :-window]
    start = np.arange(sums.shape[1])[None, :]
    return sums, (start >= flank) & (start + window + flank <= lengths[:, None])


def laplace_scale(values: np.ndarray) -> float:
    """The Laplace scale b of one sign's |window sums|: Q25 / ln(4/3) (module docstring); nan without values."""
    import numpy as np
    values = np.abs(values[values != 0])
    if values.size == 0:
        return math.nan
    return float(np.quantile(values, NULL_QUANTILE) / math.log(1 / (1 - NULL_QUANTILE)))


def call_seqlets(score: np.ndarray, lengths: np.ndarray, window: int = DEFAULTS["window"],
                 flank: int = DEFAULTS["flank"], fdr: float = DEFAULTS["fdr"]) -> pd.DataFrame:
    """Seqlets of per-base attributions score [n, L] (0 past each record's length; module docstring):
    one row per seqlet, largest |window_sum| first: record (index), start, end (the seqlet: window and
    flanks, 0-based half-open), sign (+1/-1), window_sum, p, q. Attributes `scale` {+1: b, -1: b}."""
    import numpy as np
    import pandas as pd
    from scipy.stats import false_discovery_control

    if window < 1 or flank < 0:
        raise GeneMaskError(f"--window {window} / --flank {flank}: need window >= 1 and flank >= 0")
    if not 0 < fdr < 1:
        raise GeneMaskError(f"--fdr {fdr}: must be in (0, 1)")
    sums, valid = window_sums(np.asarray(score, dtype=np.float64), np.asarray(lengths), window, flank)
    rec, start = np.nonzero(valid)
    x = sums[rec, start]
    scale = {s: laplace_scale(x[np.sign(x) == s]) for s in (1, -1)}
    b = np.where(x > 0, scale[1], scale[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where((x != 0) & (b > 0), np.exp(-np.abs(x) / b), 1.0)
    p = np.nan_to_num(p, nan=1.0)
    q = false_discovery_control(p) if p.size else p
    keep = np.flatnonzero(q <= fdr)
    keep = keep[np.argsort(-np.abs(x[keep]), kind="stable")]
    taken = np.zeros((sums.shape[0], sums.shape[1] + window), dtype=bool)
    rows = []
    for i in keep:
        r, lo = rec[i], start[i] - flank
        hi = start[i] + window + flank
        if not taken[r, lo:hi].any():
            taken[r, lo:hi] = True
            rows.append(i)
    rows = np.asarray(rows, dtype=np.int64)
    out = pd.DataFrame({"record": rec[rows], "start": start[rows] - flank, "end": start[rows] + window + flank,
                        "sign": np.sign(x[rows]).astype(np.int64), "window_sum": x[rows], "p": p[rows], "q": q[rows]})
    out.attrs["scale"] = scale
    return out


def seqlet_mass(score: np.ndarray, seqlets: pd.DataFrame) -> np.ndarray:
    """sum |score| over each seqlet's bases."""
    import numpy as np
    cs = np.concatenate([np.zeros((len(score), 1)), np.cumsum(np.abs(score), axis=1)], axis=1)
    r, s, e = (seqlets[c].to_numpy(dtype=np.int64) for c in ("record", "start", "end"))
    return cs[r, e] - cs[r, s]


def reliance(score: np.ndarray, lengths: np.ndarray, seqlets: pd.DataFrame, matched: np.ndarray) -> pd.DataFrame:
    """Per record: total_mass (sum |score|), seqlet_mass and matched_mass (inside its seqlets, inside
    those with `matched` True), n_seqlets, n_matched_seqlets, seqlet_share, reliance (= matched_mass /
    total_mass; nan where the total is 0)."""
    import numpy as np
    import pandas as pd
    n = len(lengths)
    past = np.arange(score.shape[1])[None, :] >= np.asarray(lengths)[:, None]
    total = np.where(past, 0.0, np.abs(score)).sum(axis=1)
    mass = seqlet_mass(score, seqlets)
    rec = seqlets["record"].to_numpy(dtype=np.int64)
    matched = np.asarray(matched, dtype=bool)
    out = pd.DataFrame({
        "total_mass": total,
        "seqlet_mass": np.bincount(rec, weights=mass, minlength=n),
        "matched_mass": np.bincount(rec[matched], weights=mass[matched], minlength=n),
        "n_seqlets": np.bincount(rec, minlength=n), "n_matched_seqlets": np.bincount(rec[matched], minlength=n)})
    with np.errstate(invalid="ignore", divide="ignore"):
        out["seqlet_share"] = np.where(total > 0, out["seqlet_mass"] / total, np.nan)
        out["reliance"] = np.where(total > 0, out["matched_mass"] / total, np.nan)
    return out


# ---------------------------------------------------------------------------------------------
# motifs: modisco-lite on our seqlets, Tomtom against JASPAR
# ---------------------------------------------------------------------------------------------
@dataclass
class Motif:
    name: str  # pos_0, neg_1, ...: modisco-lite's pattern order within each sign
    sign: int
    ppm: np.ndarray  # [w, 4] letter probabilities, trimmed (columns A C G T)
    cwm: np.ndarray  # [w, 4] mean contributions, trimmed
    instances: list[tuple[int, int, int, bool]]  # (record, start, end, reverse-complemented) of its aligned seqlets


def one_hot_tracks(att: Attributions) -> tuple[np.ndarray, np.ndarray]:
    """(one_hot, hypothetical) float32 [n, L, 4] (columns A C G T): modisco-lite's layout; 0 past each end."""
    import numpy as np
    n, width = att.score.shape
    oh = np.zeros((n, width, 4), dtype=np.float32)
    lookup = np.full(256, 255, dtype=np.uint8)
    lookup[np.frombuffer(ALPHABET.encode(), np.uint8)] = np.arange(4)
    for i, s in enumerate(att.sequence):
        rows = lookup[np.frombuffer(s.encode(), np.uint8)]
        ok = np.flatnonzero(rows < 4)
        oh[i, ok, rows[ok]] = 1.0
    return oh, np.ascontiguousarray(att.centred.transpose(0, 2, 1), dtype=np.float32)


def trim_span(ppm: np.ndarray, min_bits: float = DEFAULTS["trim_bits"]) -> tuple[int, int]:
    """[lo, hi) of the columns from the first to the last that hold >= min_bits of information (all
    columns when none does)."""
    import numpy as np

    from .figures import information_content

    keep = np.flatnonzero(information_content(ppm) >= min_bits)
    return (int(keep[0]), int(keep[-1]) + 1) if keep.size else (0, len(ppm))


def modisco_motifs(att: Attributions, seqlets: pd.DataFrame, min_seqlets: int = DEFAULTS["min_seqlets"],
                   trim_bits: float = DEFAULTS["trim_bits"]) -> list[Motif]:
    """modisco-lite's patterns of each sign's seqlets (module docstring), positive sign first."""
    import numpy as np
    try:
        from modiscolite import core, precompile, tfmodisco
    except ImportError as e:
        raise GeneMaskError(f"modisco-lite is not importable ({e}); install the pinned modisco-lite, leidenalg, "
                            f"igraph, h5py and hdf5plugin (pyproject.toml)") from None
    oh, hyp = one_hot_tracks(att)
    track_set = core.TrackSet(one_hot=oh, contrib_scores=oh * hyp, hypothetical_contribs=hyp)
    motifs = []
    for sign in (1, -1):
        rows = seqlets[seqlets["sign"] == sign]
        if len(rows) < min_seqlets:
            print(f"[explain-motifs] {len(rows)} {SIGN_NAME[sign]} seqlets (< --min-seqlets {min_seqlets}): no "
                  f"{SIGN_NAME[sign]} motifs", file=sys.stderr, flush=True)
            continue
        precompile.start()  # modisco-lite compiles its numba kernels in forked children meanwhile
        objs = track_set.create_seqlets([core.Seqlet(int(r), int(s), int(e), False) for r, s, e in
                                         zip(rows["record"], rows["start"], rows["end"])])
        width = int((rows["end"] - rows["start"]).max())
        patterns = tfmodisco.seqlets_to_patterns(
            seqlets=objs, track_set=track_set, track_signs=sign, trim_to_window_size=width,
            initial_flank_to_add=0, final_flank_to_add=0, min_num_to_trim_to=min(30, min_seqlets),
            final_min_cluster_size=min_seqlets) or []
        for i, pat in enumerate(patterns):
            lo, hi = trim_span(np.asarray(pat.sequence), trim_bits)
            motifs.append(Motif(f"{'pos' if sign > 0 else 'neg'}_{i}", sign, np.asarray(pat.sequence)[lo:hi],
                                np.asarray(pat.contrib_scores)[lo:hi],
                                [(int(s.example_idx), int(s.start), int(s.end), bool(s.is_revcomp))
                                 for s in pat.seqlets]))
    return motifs


def assign_seqlets(seqlets: pd.DataFrame, motifs: list[Motif]) -> tuple[np.ndarray, np.ndarray]:
    """(motif index or -1, reverse-complemented) of each seqlet: the motif whose aligned instance in the
    same record overlaps it most (the first motif on a tie)."""
    import numpy as np
    best = np.full(len(seqlets), -1, dtype=np.int64)
    overlap = np.zeros(len(seqlets), dtype=np.int64)
    rc = np.zeros(len(seqlets), dtype=bool)
    by_record: dict[int, list[int]] = {}
    for j, r in enumerate(seqlets["record"].to_numpy()):
        by_record.setdefault(int(r), []).append(j)
    start, end = seqlets["start"].to_numpy(), seqlets["end"].to_numpy()
    for m, motif in enumerate(motifs):
        for r, s, e, flip in motif.instances:
            for j in by_record.get(r, ()):
                o = min(e, end[j]) - max(s, start[j])
                if o > overlap[j]:
                    best[j], overlap[j], rc[j] = m, o, flip
    return best, rc


def consensus(ppm: np.ndarray) -> str:
    """Most probable base per column; upper case where the column holds >= 1 bit."""
    from .figures import information_content

    ic = information_content(ppm)
    return "".join(ALPHABET[b] if bits >= 1 else ALPHABET[b].lower() for b, bits in zip(ppm.argmax(axis=1), ic))


def annotate(motifs: list[Motif], jaspar: list, q_threshold: float) -> pd.DataFrame:
    """The motifs table (module docstring): Tomtom of each motif against the JASPAR motifs."""
    import numpy as np
    import pandas as pd

    from .motifs import tomtom_jaspar

    cols = ["motif", "attribution", "n_seqlets", "width", "consensus", "jaspar_id", "jaspar_name", "p", "q",
            "matched", "n_jaspar_matches", "strand"]
    if not motifs:
        return pd.DataFrame({c: [] for c in cols})
    t = tomtom_jaspar([m.ppm.T for m in motifs], jaspar)
    best = t["p"].argmin(axis=1)
    rows = np.arange(len(motifs))
    q = t["q"][rows, best]
    return pd.DataFrame({
        "motif": [m.name for m in motifs], "attribution": [SIGN_NAME[m.sign] for m in motifs],
        "n_seqlets": [len(m.instances) for m in motifs], "width": [len(m.ppm) for m in motifs],
        "consensus": [consensus(m.ppm) for m in motifs],
        "jaspar_id": [str(jaspar[j].matrix_id) for j in best], "jaspar_name": [str(jaspar[j].name) for j in best],
        "p": t["p"][rows, best], "q": q, "matched": q <= q_threshold,
        "n_jaspar_matches": (t["q"] <= q_threshold).sum(axis=1),
        "strand": np.where(t["strand"][rows, best] == 1, "-", "+")}, columns=cols)


def plot_logos(motifs: list[Motif], table: pd.DataFrame, jaspar: list, output) -> None:
    """One row per motif: its logo, and its best JASPAR match's (reverse-complemented where Tomtom
    aligned the reverse strand); written in place (the caller makes it atomic)."""
    import numpy as np

    from .figures import draw_logo, new_figure, png_bytes
    from .motifs import jaspar_probabilities

    by_id = {str(m.matrix_id): m for m in jaspar}
    fig = new_figure(11, 1.9 * max(len(motifs), 1))
    if not motifs:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no motifs (too few seqlets, or none clustered)", ha="center", va="center")
    else:
        axes = np.atleast_2d(fig.subplots(len(motifs), 2, width_ratios=[1, 1]))
        for (ax_m, ax_j), m, (_, row) in zip(axes, motifs, table.iterrows()):
            draw_logo(ax_m, m.ppm, title=f"{m.name} ({row['attribution']}, {row['n_seqlets']} seqlets): "
                                         f"{row['consensus']}")
            ref = jaspar_probabilities(by_id[row["jaspar_id"]]).T
            if row["strand"] == "-":
                ref = ref[::-1, ::-1]
            draw_logo(ax_j, ref, title=f"best JASPAR match {row['jaspar_id']} {row['jaspar_name']} ({row['strand']}): "
                                       f"p = {row['p']:.2g}, q = {row['q']:.2g}{'' if row['matched'] else ' (not matched)'}")
    Path(output).write_bytes(png_bytes(fig))


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def explain_motifs(att: Attributions, window: int = DEFAULTS["window"], flank: int = DEFAULTS["flank"],
                   fdr: float = DEFAULTS["fdr"], min_seqlets: int = DEFAULTS["min_seqlets"],
                   q_threshold: float | None = None, trim_bits: float = DEFAULTS["trim_bits"], jaspar: list | None = None,
                   release: str | None = None) -> dict:
    """Seqlets, motifs, their JASPAR annotation and per-record reliance of pooled attributions:
    {seqlets, motifs (list of Motif), table (motifs TSV), reliance (TSV), jaspar}."""
    import numpy as np

    from .motifs import DEFAULT_Q, load_jaspar

    q_threshold = DEFAULT_Q if q_threshold is None else q_threshold
    if not 0 < q_threshold <= 1:
        raise GeneMaskError(f"--q-threshold {q_threshold}: must be in (0, 1]")
    if min_seqlets < 2:
        raise GeneMaskError(f"--min-seqlets {min_seqlets}: must be >= 2")
    seqlets = call_seqlets(att.score, att.lengths, window, flank, fdr)
    motifs = modisco_motifs(att, seqlets, min_seqlets, trim_bits)
    jaspar = load_jaspar(release) if jaspar is None else jaspar
    table = annotate(motifs, jaspar, q_threshold)
    which, rc = assign_seqlets(seqlets, motifs)
    matched = table["matched"].to_numpy(dtype=bool)
    seqlets = seqlets.assign(
        source=[att.source[r] for r in seqlets["record"]], id=[att.ids[r] for r in seqlets["record"]],
        strand=np.where(rc, "-", "+"), attribution=[SIGN_NAME[s] for s in seqlets["sign"]],
        mass=seqlet_mass(att.score, seqlets), motif=[motifs[m].name if m >= 0 else "" for m in which],
        matched=np.where(which >= 0, matched[np.maximum(which, 0)] if len(matched) else False, False))
    rel = reliance(att.score, att.lengths, seqlets, seqlets["matched"].to_numpy(dtype=bool))
    rel.insert(0, "length", att.lengths)
    rel.insert(0, "id", att.ids)
    for key in reversed(("scheme", "pretrain_seed", "pretrain_step")):  # the classifier's run: for pairing
        rel.insert(0, key, [att.provenance[src][key] for src in att.source])
    rel.insert(0, "source", att.source)
    return {"seqlets": seqlets, "motifs": motifs, "table": table, "reliance": rel, "jaspar": jaspar,
            "q_threshold": q_threshold}


def explain_motifs_cli(inputs: list[str], output: str, seqlets: str | None = None, reliance: str | None = None,
                       logos: str | None = None, window: int = DEFAULTS["window"], flank: int = DEFAULTS["flank"],
                       fdr: float = DEFAULTS["fdr"], min_seqlets: int = DEFAULTS["min_seqlets"],
                       q_threshold: float | None = None, release: str | None = None) -> int:
    """`genemask explain-motifs`: the TSVs and PNG of the module docstring; a summary line on stdout."""
    import numpy as np
    for path, ext in ((output, ".tsv"), (seqlets, ".tsv"), (reliance, ".tsv"), (logos, ".png")):
        if path is not None and not str(path).lower().endswith(ext):
            raise GeneMaskError(f"{path}: written as {ext[1:].upper()}; use a {ext} name")
    att = load_attributions(inputs)
    res = explain_motifs(att, window, flank, fdr, min_seqlets, q_threshold, release=release)
    s, t = res["seqlets"], res["table"]
    seqlet_cols = ["source", "id", "start", "end", "strand", "attribution", "window_sum", "q", "mass", "motif",
                   "matched"]
    with contextlib.ExitStack() as stack:  # every output or none
        tmp = {key: stack.enter_context(atomic_output(path)) for key, path in
               (("o", output), ("s", seqlets), ("r", reliance), ("l", logos)) if path is not None}
        t.to_csv(tmp["o"], sep="\t", index=False, float_format="%.6g")
        if "s" in tmp:
            s[seqlet_cols].to_csv(tmp["s"], sep="\t", index=False, float_format="%.6g")
        if "r" in tmp:
            res["reliance"].to_csv(tmp["r"], sep="\t", index=False, float_format="%.6g")
        if "l" in tmp:
            plot_logos(res["motifs"], t, res["jaspar"], tmp["l"])
    matched = t[t["matched"]]
    rel = res["reliance"]["reliance"].to_numpy(dtype=np.float64)
    mean_reliance = float(rel[np.isfinite(rel)].mean()) if np.isfinite(rel).any() else math.nan
    print(f"explain-motifs: {len(att.ids)} records, {len(s)} seqlets ({int((s['sign'] > 0).sum())} positive), "
          f"{len(t)} motifs, {len(matched)} matched to JASPAR (q <= {res['q_threshold']:g}): "
          + (", ".join(f"{r.motif} {r.jaspar_id} {r.jaspar_name} q={r.q:.2g}" for r in matched.itertuples()) or "none")
          + f"; mean reliance {mean_reliance:.3f} over {int(np.isfinite(rel).sum())} records with attribution")
    return 0
