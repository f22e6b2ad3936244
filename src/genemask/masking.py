"""Masking schemes for k-mer masked language modelling (spec section 5), vectorised over the batch.

One interface: `make_masker(scheme, k=6, ranking=None, **options)` returns a `Masker`;
`masker(input_ids, generator, step=0, total_steps=1) -> (masked_input_ids, labels)`. Rows are
`[CLS] t1..tn [SEP] [PAD]...` (ids PAD0 UNK1 CLS2 SEP3 MASK4, k-mer token id = k-mer index + 5).
The real tokens of a row are the positions 1..end, end = position of the closing [SEP] - 1 (a row
whose last non-[PAD] token is not [SEP] is taken as truncated: end = its last non-[PAD] position).
[CLS]/[SEP]/[PAD] are never masked; every span is clipped to [1, end]. After the masked set is chosen, each masked token becomes
[MASK] with p 0.8, a random k-mer token (never a special token) with p 0.1, or stays (0.1); labels
are -100 outside the masked set.

Schemes (option `p` overrides the probability; defaults in `DEFAULT_P`):
- `random`: every real token with p = 0.15 (BERT).
- `dnabert`: centres with p = 0.025; a centre c masks its k-token span c+lo..c+hi,
  (lo, hi) = (-1, 1), (-1, 2), (-2, 2), (-2, 3) for k = 3, 4, 5, 6: DNABERT's MASK_LIST offsets
  [-1,1] / [-1,1,2] / [-2,-1,1,2] / [-2,-1,1,2,3] plus the centre itself.
- `genemask` (the paper's figure): centres with p = 0.0176; every centre masks its DNABERT span; for
  each centre c, q(c) is the position in its span (clipped) whose token has the best (smallest) NPMI
  rank r(c) (rank looked up by token id; [UNK] and specials rank worst, 4**k + 1; ties: leftmost
  position); the centres of a row are sorted by (r(c), c); the best ceil(m/2) of the m centres are
  "high", except that with m <= 8 all are high (option `high_rule="all_if_le8"`, the released
  code's rule and the default: 15.3 % masked on 506-token rows; `high_rule="half"`, the figure's
  wording: 14.1 %). Each high centre masks q(c)-R..q(c)+R, R = `high_radius` (default k-1: the
  11-token span for k = 6, i.e. every k-mer overlapping the chosen one).
- `reference`: as genemask but with the released code's defect: the rank is looked up with the
  token's *position* used as a token id (rank of the k-mer whose id equals the position; positions
  that are special ids or beyond the vocabulary rank worst), so the choice never depends on the DNA.
  Ablation only.
- `curriculum` (the project's own design, older than the release of the authors' curriculum code,
  which `cm_step` / `cm_gems` below follow; spec section 5): the genemask machinery with the same number of high centres per row (so the masking budget, about 15 %, is
  constant through training), but which centres are high, and where their wide span goes, moves
  from random to NPMI-guided along a schedule
      s(t) = min(1, t / (total_steps * ramp))          (option `ramp`, default 1.0 = linear over
                                                          the whole run; 0.5 = full NPMI at half way)
  At step t, of the n_high high slots of a row, n_npmi = floor(s * n_high + v) (v ~ U[0,1) per row:
  stochastic rounding, so the expected share is exactly s) go to the best-NPMI centres and widen
  around q(c) as in genemask; the other n_high - n_npmi go to centres picked uniformly at random
  among the rest and widen around the centre c itself (no NPMI information). s = 0 is "random
  11-token spans" (easy: the spans fall on ordinary, predictable-from-parts k-mers); s = 1 is
  exactly genemask (hard: whole high-NPMI units are hidden). Rationale: GeneMask's premise is that
  high-NPMI k-mers are the units that cannot be recovered from their parts, i.e. the hard ones, so
  the difficulty criterion is NPMI and the curriculum is easy-to-hard over training.

The authors' curriculum methods (spec section 5b; released code `roysoumya/curriculum-GeneMask`,
`src/pretraining-adaptive/`), ranks looked up by token id as in genemask:
- `global_pmi` (their "Global-PMI" baseline): centres with p = 0.0136 (= 0.15 / 11) are drawn only for
  their count m per row; the row's m real positions whose k-mers have the best NPMI rank (ties:
  leftmost) each mask q-R..q+R (R = `high_radius`, 11 tokens for k = 6) clipped to [1, end]. The drawn
  centres themselves are not masked.
- `cm_step`: per call (one micro-batch) a coin u ~ U[0, 1) picks global_pmi (centres with `global_p`,
  default 0.0136) for the whole batch when u < s(t), else dnabert (centres with `p`, default 0.025);
      s(t) = min(1, floor(t / floor(T / 100)) / 100)      (T = total_steps; 0 -> 1 in 1 % steps)
  and, for T < 100 (where the released formula divides by zero), s(t) = min(1, floor(100 t / T) / 100),
  the whole percents of training done (`cm_step_share`). The min(1, .) is needed when T is not a
  multiple of 100 (T = 150: s reaches 1 at t = 100).
- `cm_gems`: genemask masking (centres with `p`, default 0.0176, all of genemask's options) until the
  validation perplexity plateaus, then global_pmi (centres with `global_p`) for the rest of training.
  The plateau rule is the released one: after each validation evaluation the training loop calls
  `Masker.observe_validation(step, perplexity)`; the masker switches at that `step` (every call with
  step >= switch_step masks with global_pmi) as soon as the smallest absolute difference between
  consecutive validation perplexities so far is below `threshold` (default 1.0; see
  `DEFAULT_THRESHOLD`). `switch_step` is None until then; `state_dict` / `load_state_dict` carry the
  rule's state through a checkpoint. Option `switch_at=N` fixes the switch at step N instead (an
  ablation; `genemask mask-stats --option switch_at=0` shows the post-switch branch, which
  mask-stats cannot otherwise reach: it has no validation signal).
- option `faithful=true` (the three schemes above; an ablation, never the default) reproduces the
  released code's defects: every rank is looked up with the token's *position* used as its token id
  (so faithful global_pmi masks the same positions in every row of the same length and count);
  a token id without a k-mer rank (the special ids 0-4, a k-mer missing from the table, rank 0, an id
  beyond the vocabulary) ranks 4**k (4096, the worst k-mer's rank, as in the release; genemask's
  release gives it 0); in cm_gems's genemask branch the best token of a span is the centre unless
  another position ranks strictly better (the release starts its minimum at the centre), and the
  "high" centres are the first ceil(m/2) in position order (the release takes the first half of its
  list before sorting it; it lists them in Python set order, which for these small integers is
  hash-table order, an order that, like ours, ignores the ranks), all of them when m <= 8 (fewer than
  5 would be kept).

Random draws, in order, from the given `torch.Generator` (same seed and batch -> same masks):
- `random`: `rand(B, L) < p` (dense).
- centre schemes: the centres, a Bernoulli(p) process over positions 1..end, drawn through its gaps:
  float64 `rand` on a [B, K] block turned into Geometric(p) gaps by inversion (K ~ L*p + 6 sd; more
  blocks only if a row is not yet covered), which has the law of `rand(B, L) < p` at a fraction of
  the cost (`draw_centres`; p > 0.1 falls back to the dense draw); curriculum then draws
  `randint(0, 2**31, (N,))` (a priority per centre, row-major) and `rand(B)` (the rounding jitter).
  cm_step draws its coin `rand(1)` first, then the centres of the branch it picked; global_pmi and
  cm_gems draw only the centres (cm_gems with the p of its current branch).
- replacement: `rand(n)` and `randint(5, V, (n,))` for the n masked tokens in row-major order.
`Masker.draw` and `Masker.positions_from_draws` split the drawing from the (deterministic) choice so
that the slow loop oracle in `masking_oracle` is checked against the same draws.

Vectorisation: no Python loop runs over rows, tokens or centres, and nothing scans the [B, L] batch
when its rows fill the width (`row_ends`). Centres are kept as flat (row-major) indices; every span
is a [width, N] block of flat indices clamped to its row's [1, end] (`span_indices`) and written with
one `index_fill_`, so the work is proportional to the number of centres, not B x L. The best token of
each span is one min-reduction of rank * B*L + position; the per-row ordering of centres is one sort
of a combined (row, rank, column) key. `genemask bench masking` times this against the loop version.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from . import kmers
from .defaults import check as check_options
from .defaults import defaults as config_defaults
from .defaults import node as config_node
from .util import GeneMaskError

SCHEMES = ("random", "dnabert", "genemask", "reference", "curriculum", "global_pmi", "cm_step", "cm_gems")
DEFAULT_P = {"random": 0.15, "dnabert": 0.025, "genemask": 0.0176, "reference": 0.0176, "curriculum": 0.0176,
             "global_pmi": 0.0136, "cm_step": 0.025, "cm_gems": 0.0176}  # cm_*: their first branch's p
# The options' defaults live in the config schema (pretrain.settings.masking; genemask.defaults), but
# `p` (DEFAULT_P, per scheme) and `high_radius` (k - 1), which depend on the scheme and k.
OPTION_DEFAULTS = config_defaults("pretrain.settings.masking")
DEFAULT_K = config_defaults("corpus")["k"]  # 6
GLOBAL_P = OPTION_DEFAULTS["global_p"]  # 0.0136: centre probability (count only) of global_pmi, and option `global_p` of cm_step / cm_gems
HIGH_RULES = tuple(config_node("pretrain.settings.masking.high_rule")["enum"])  # all_if_le8, half
NEEDS_RANKING = ("genemask", "reference", "curriculum", "global_pmi", "cm_step", "cm_gems")
FAITHFUL_SCHEMES = ("global_pmi", "cm_step", "cm_gems")  # option `faithful`: the released code's defects
OPTIONS = ("p", "high_rule", "high_radius", "ramp", "mask_prob", "random_prob", "global_p", "threshold",
           "switch_at", "faithful")
# cm_gems's plateau threshold on |consecutive validation perplexity difference| (no released default).
# Perplexity here is exp(validation MLM loss) under the scheme's own masking: it starts near the
# vocabulary size (~4100) and ends in the tens (a genemask 11-token span hides 6 bases, 3.3 per masked
# token on average, so 4**3.3 ~ 90 bounds it; dnabert's spans hide 1 base per token, <= 4). With
# evaluations every 500 steps (the paper's setting), a change below 1.0 there is a few percent of the
# value, i.e. a plateau, while the early phase moves by tens to thousands; a threshold far smaller
# (0.01) would rarely be met before the learning rate decays, a larger one (10) would fire on the early
# drop's first slow-down. The switch step is recorded (`genemask.json` `switch_step`) so it can be judged.
DEFAULT_THRESHOLD = OPTION_DEFAULTS["threshold"]  # 1.0
IGNORE = -100


def span_offsets(k: int) -> tuple[int, int]:
    """DNABERT's span around a centre, as (lo, hi) inclusive offsets: k=6 -> (-2, 3)."""
    return -((k - 1) // 2), k // 2


def curriculum_share(step: int, total_steps: int, ramp: float = 1.0) -> float:
    """s(t) = min(1, t / (total_steps * ramp)), in [0, 1]."""
    horizon = total_steps * ramp
    if horizon <= 0:
        return 1.0
    return float(min(1.0, max(0.0, step / horizon)))


def cm_step_share(step: int, total_steps: int) -> float:
    """cm_step's s(t) = min(1, floor(t / floor(T/100)) / 100); for T < 100, min(1, floor(100 t / T) / 100)."""
    T, t = int(total_steps), max(0, int(step))
    if T <= 0:
        return 1.0
    block = T // 100
    pct = t // block if block >= 1 else (100 * t) // T
    return min(100, pct) / 100


def real_positions(input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool [B, L] mask of the real-token positions 1..end, end [B]); see `row_ends`."""
    end = row_ends(input_ids)
    return real_mask(end, input_ids.shape[1]), end


def real_mask(end: torch.Tensor, L: int) -> torch.Tensor:
    """bool [B, L]: True at the positions 1..end[b] of each row b."""
    pos = torch.arange(L, device=end.device)
    return (pos >= 1) & (pos <= end[:, None])


def row_ends(input_ids: torch.Tensor) -> torch.Tensor:
    """end [B]: the last real-token position of each row.

    n = 1 + the position of the row's last non-[PAD] token (0 for an all-[PAD] row); end = n - 2 when
    that token is [SEP] (the normal `[CLS] t1..tn [SEP] [PAD]...` row), else n - 1 (a truncated row
    without [SEP]). Rows are right-padded, so when no row ends in [PAD] (full-width rows, as in the
    pretraining corpus) n = L for every row and the [B, L] matrix is not scanned.
    """
    B, L = input_ids.shape
    dev = input_ids.device
    if L == 0:
        return torch.full((B,), -1, dtype=torch.long, device=dev)
    last = input_ids[:, L - 1]
    if bool(last.ne(kmers.PAD).all()):
        n = torch.full((B,), L, dtype=torch.long, device=dev)
    else:
        n = (input_ids.ne(kmers.PAD) * torch.arange(1, L + 1, device=dev)).amax(1)
        last = input_ids.gather(1, (n - 1).clamp(min=0)[:, None])[:, 0]
    return n - 1 - last.eq(kmers.SEP).long()


def rank_table(ranking: np.ndarray, k: int) -> torch.Tensor:
    """Rank by token id: specials ([PAD] [UNK] [CLS] [SEP] [MASK]) get the worst rank, 4**k + 1."""
    ranking = np.asarray(ranking, dtype=np.int64)
    if ranking.shape != (4**k,):
        raise GeneMaskError(f"ranking: expected {4**k} ranks (one per {k}-mer), got shape {ranking.shape}")
    worst = 4**k + 1
    return torch.from_numpy(np.concatenate([np.full(kmers.N_SPECIAL, worst), np.minimum(ranking, worst)]))


def faithful_rank_table(ranking: np.ndarray, k: int) -> torch.Tensor:
    """The released curriculum code's rank by token id (`faithful`): as `rank_table`, but every id
    without a k-mer rank (specials, k-mers missing from the table, rank 0) ranks 4**k (4096 for k = 6)."""
    t = rank_table(ranking, k).clone()
    t[(t == 0) | (t >= 4**k + 1)] = 4**k
    return t


def position_ranks(table: torch.Tensor, L: int, fill: int) -> torch.Tensor:
    """long [L]: table[j] for each position j used as a token id (the released defect), `fill` where j is
    beyond the vocabulary."""
    pos = torch.arange(L, device=table.device)
    return torch.where(pos < table.numel(), table.index_select(0, pos.clamp(max=table.numel() - 1)), fill)


class Centres(NamedTuple):
    """Centres in flat (row-major) coordinates, one entry per centre in row-major order.

    flat = row * L + column; first, last: the flat indices of the centre's row's positions 1 and end,
    the bounds every span around it is clamped to.
    """

    flat: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor, cols: torch.Tensor, end: torch.Tensor, L: int) -> Centres:
        base = rows * L
        return cls(base + cols, base + 1, base + end.index_select(0, rows))


def span_indices(anchors: torch.Tensor, first: torch.Tensor, last: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Flat indices of the spans anchor+lo..anchor+hi clamped to [first, last]: long [hi - lo + 1, N].

    Clamping, rather than dropping, the out-of-row part of a span is exact as long as each anchor lies in
    [first, last]: a span reaching past an edge contains that edge, so the clamped copies only repeat
    positions the span holds anyway (a span's real positions are the distinct values of its column).
    """
    offs = torch.arange(lo, hi + 1, device=anchors.device)[:, None]
    return torch.clamp(anchors[None, :] + offs, first[None, :], last[None, :])


def _spans_mask(B: int, L: int, *index_sets: torch.Tensor) -> torch.Tensor:
    """bool [B, L], True at every flat index of the given index tensors; index B*L is a dump slot that
    is dropped (cheaper than compacting the index tensors)."""
    out = torch.zeros(B * L + 1, dtype=torch.bool, device=index_sets[0].device)
    for idx in index_sets:
        if idx.numel():
            out.index_fill_(0, idx.reshape(-1), True)
    return out[: B * L].view(B, L)


def _high_per_row(m: torch.Tensor, high_rule: str) -> torch.Tensor:
    """n_high [B] for m centres per row: ceil(m / 2), or m when m <= 8 under the rule `all_if_le8`."""
    n_high = (m + 1) // 2
    if high_rule == "all_if_le8":
        return torch.where(m <= 8, m, n_high)
    if high_rule != "half":
        raise GeneMaskError(f"option high_rule={high_rule!r}: expected one of {', '.join(HIGH_RULES)}")
    return n_high


NUMPY_SORT = True  # on CPU, sort and scan with numpy (~2x faster than torch.sort / nonzero here)


def _argsort(key: torch.Tensor) -> torch.Tensor:
    """Indices that sort `key` (int64, all values distinct, so any sort gives the same result)."""
    if NUMPY_SORT and key.device.type == "cpu":
        return torch.from_numpy(np.argsort(key.numpy()))
    return torch.sort(key).indices


def _smallest(key: torch.Tensor, n: int) -> torch.Tensor:
    """The n smallest entries of each row of `key` (int64 [B, L], distinct per row), ascending: [B, n]
    (numpy's partition + sort of n on CPU, ~4x faster than torch.topk here)."""
    if NUMPY_SORT and key.device.type == "cpu":
        a = key.numpy()
        part = np.partition(a, n - 1, axis=1)[:, :n] if n < a.shape[1] else a
        return torch.from_numpy(np.sort(part, axis=1))
    return torch.topk(key, n, dim=1, largest=False, sorted=True).values


PRIORITY_BITS = 31  # curriculum priorities are uniform integers in [0, 2**31) (ties: by column, as the loop)


def genemask_positions(input_ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, ranks: torch.Tensor,
                       k: int = DEFAULT_K, high_rule: str = OPTION_DEFAULTS["high_rule"], high_radius: int | None = None,
                       by_position: bool = False, share: float = 1.0, priority: torch.Tensor | None = None,
                       jitter: torch.Tensor | None = None, end: torch.Tensor | None = None,
                       pos_ranks: torch.Tensor | None = None, centre_first: bool = False,
                       sort_by_rank: bool = True) -> torch.Tensor:
    """The genemask masked set (bool [B, L]) for the centres (rows[i], cols[i]); also `reference`,
    `curriculum` and cm_gems's genemask branch.

    rows, cols: the centres in row-major order, all inside [1, end]. ranks: rank by token id
    (`rank_table`). by_position: the released code's defect (position used as the token id).
    share < 1 (curriculum): needs `priority` (int64 in [0, 2**PRIORITY_BITS), one per centre, row-major)
    and `jitter` (float [B]). end: `row_ends(input_ids)`, if already known. The released curriculum
    code's defects (cm_gems `faithful`): pos_ranks (long [L], `position_ranks`): the rank of column j,
    whatever the token; centre_first: among a span's best-ranked tokens the centre wins, then the
    leftmost; sort_by_rank=False: the high centres are the row's first n_high in column order.

    Per centre, the best token of its span is the minimum of key = rank * B*L + flat position over the
    clamped span (so ties go to the leftmost position). Per row, the centres are ordered by (best rank,
    column) with one sort of a row-major combined key; because the sorted list keeps each row's block in
    place, entry i of the sorted list belongs to row rows[i] and is among its row's n_high best when
    i < start[row] + n_high[row].
    """
    B, L = input_ids.shape
    dev = input_ids.device
    if end is None:
        end = row_ends(input_ids)
    lo, hi = span_offsets(k)
    R = k - 1 if high_radius is None else int(high_radius)
    N = rows.numel()
    c = Centres.of(rows, cols, end, L)
    nb = span_indices(c.flat, c.first, c.last, lo, hi)  # each centre's DNABERT span = its neighbourhood
    if N == 0:
        return _spans_mask(B, L, nb)
    BL = B * L
    worst = 4**k + 1  # rank_table caps every rank at this
    ranks = ranks.to(dev)
    if pos_ranks is not None:
        pos = nb - (c.first - 1)[None, :]  # column within the row
        r = pos_ranks.to(dev).index_select(0, pos.view(-1)).view_as(pos)
    elif by_position:
        pos = nb - (c.first - 1)[None, :]  # column within the row
        r = torch.where(pos < ranks.numel(), ranks.index_select(0, pos.clamp(max=ranks.numel() - 1).view(-1)).view_as(pos), worst)
    else:
        r = ranks.index_select(0, input_ids.view(-1).index_select(0, nb.view(-1))).view_as(nb)
    if centre_first:  # tie key 0 for the centre (row -lo of the span block), flat + 1 for the others
        tie = (nb + 1).double()
        tie[-lo] = 0.0
        best = (r.double() * (BL + 1) + tie).amin(0).long()
        t = best % (BL + 1)
        best_q = torch.where(t == 0, c.flat, t - 1)
        rank_part = (best // (BL + 1)) * BL
    else:
        # float64 holds rank * B*L + flat exactly (< 2**53) and reduces ~50x faster than int64 on CPU
        best = (r.double() * BL + nb).amin(0).long()
        best_q = best % BL  # flat position of the best token
        rank_part = best - best_q
    if sort_by_rank:
        order = _argsort(rows * ((worst + 2) * BL) + rank_part + c.flat)  # by (row, best rank, column)
    else:
        order = torch.arange(N, device=dev)  # row-major: each row's centres by column

    m = torch.bincount(rows, minlength=B)
    start = torch.cumsum(m, 0) - m
    n_high = _high_per_row(m, high_rule)
    i = torch.arange(N, device=dev)
    if share >= 1.0:
        n_npmi = n_high
    else:
        if priority is None or jitter is None:
            raise ValueError("share < 1 needs priority and jitter draws")
        n_npmi = torch.floor(share * n_high.to(torch.float64) + jitter.to(dev, torch.float64)).long()
        n_npmi = torch.minimum(n_npmi, n_high)
    npmi_sorted = i < (start + n_npmi).index_select(0, rows)  # rows[i]: the row of sorted entry i
    dump = torch.full_like(c.first, BL)  # a span clamped to [BL, BL] lands in the dump slot of `_spans_mask`
    wide = span_indices(best_q.index_select(0, order), torch.where(npmi_sorted, c.first, dump),
                        torch.where(npmi_sorted, c.last, dump), -R, R)
    sets = [nb, wide]
    if share < 1.0:
        # the other n_high - n_npmi high slots: the lowest priorities among the row's remaining centres
        npmi = torch.empty_like(npmi_sorted).index_put_((order,), npmi_sorted)
        pr = torch.where(npmi, 1 << PRIORITY_BITS, priority.to(dev))
        order2 = _argsort((rows * ((1 << PRIORITY_BITS) + 1) + pr) * N + i)  # ties (prob. ~2**-31 a pair) by column
        rand_sorted = i < (start + n_high - n_npmi).index_select(0, rows)
        sets.append(span_indices(c.flat.index_select(0, order2), torch.where(rand_sorted, c.first, dump),
                                 torch.where(rand_sorted, c.last, dump), -R, R))
    return _spans_mask(B, L, *sets)


def global_pmi_positions(input_ids: torch.Tensor, m: torch.Tensor, ranks: torch.Tensor | None = None,
                         k: int = DEFAULT_K, radius: int | None = None, pos_ranks: torch.Tensor | None = None,
                         end: torch.Tensor | None = None) -> torch.Tensor:
    """The global_pmi masked set (bool [B, L]): in each row b, the m[b] real positions with the best
    (smallest) rank, ties leftmost, each masking q-radius..q+radius clipped to [1, end].

    ranks: rank by token id (`rank_table`); pos_ranks (long [L]) instead: the rank of column j whatever
    its token (the released defect, `faithful`). One [B, L] gather and one top-k of the key
    rank * L + column (distinct per row, so the order is exact) for the max(m) best of every row; the
    entries past a row's own m go to the dump slot.
    """
    B, L = input_ids.shape
    dev = input_ids.device
    if end is None:
        end = row_ends(input_ids)
    R = k - 1 if radius is None else int(radius)
    m = m.to(dev)
    n = int(m.max()) if m.numel() else 0
    if n == 0:
        return torch.zeros((B, L), dtype=torch.bool, device=dev)
    col = torch.arange(L, device=dev)
    r = pos_ranks.to(dev)[None, :] if pos_ranks is not None else ranks.to(dev).index_select(0, input_ids.view(-1)).view(B, L)
    big = (4**k + 2) * L  # above every real position's key (ranks are capped at 4**k + 1)
    key = torch.where(real_mask(end, L), r * L + col, big)
    top = _smallest(key, n)  # [B, n]: each row's n best, ascending
    rows = torch.arange(B, device=dev)[:, None].expand(B, n)
    keep = torch.arange(n, device=dev)[None, :] < m[:, None]
    first, last = rows * L + 1, rows * L + end[:, None]
    dump = torch.full_like(first, B * L)
    anchors = torch.where(keep, rows * L + top % L, dump)
    idx = span_indices(anchors.reshape(-1), torch.where(keep, first, dump).reshape(-1),
                       torch.where(keep, last, dump).reshape(-1), -R, R)
    return _spans_mask(B, L, idx)


class Draws:
    """A masker's random draws.

    For the centre schemes: the centres as `rows`, `cols` (row-major order); `centres` is the same set as
    a bool [B, L] matrix, built on first use (or given, then rows/cols are derived when needed). For
    `random`: `centres` is the masked set itself. Curriculum: `priority` (int64 in [0, 2**PRIORITY_BITS),
    one per centre, row-major order) and `jitter` (float [B]). cm_step: `coin` (float [1]). cm_step /
    cm_gems: `branch`, the scheme the draw was made for ("dnabert", "genemask" or "global_pmi"; None:
    the masker works it out from the step and the coin).
    """

    def __init__(self, centres: torch.Tensor | None = None, priority: torch.Tensor | None = None,
                 jitter: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                 cols: torch.Tensor | None = None, shape: tuple[int, int] | None = None,
                 coin: torch.Tensor | None = None, branch: str | None = None):
        if centres is None and (rows is None or shape is None):
            raise ValueError("Draws needs centres, or rows, cols and shape")
        self._centres = centres
        self.priority, self.jitter, self.rows, self.cols = priority, jitter, rows, cols
        self.coin, self.branch = coin, branch
        self.shape = tuple(centres.shape) if centres is not None else tuple(shape)

    @property
    def centres(self) -> torch.Tensor:
        if self._centres is None:
            B, L = self.shape
            c = torch.zeros(B * L, dtype=torch.bool, device=self.rows.device)
            c.index_fill_(0, self.rows * L + self.cols, True)
            self._centres = c.view(B, L)
        return self._centres


SPARSE_MAX_P = 0.1  # centre probabilities up to this are drawn as geometric gaps (see `draw_centres`)


def draw_centres(end: torch.Tensor, L: int, p: float, generator, device,
                 block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bernoulli(p) centres at the positions 1..end of each row -> (rows, cols), row-major order.

    For p <= SPARSE_MAX_P the Bernoulli process is drawn through its gaps, i.i.d. Geometric(p) on
    {1, 2, ...} by inversion, ceil(log(U) / log(1 - p)) for U ~ rand: the centres are the cumulative sums
    of a [B, K] block of gaps that fall in [1, end] (K ~ L*p + 6 sd; another block is appended in the
    rare case a row is not yet covered). Same law as `rand(B, L) < p`, with ~L*p instead of L random
    numbers per row and no scan of a [B, L] matrix. Larger p: dense `rand(B, L) < p`.
    """
    B = end.shape[0]
    if p <= 0 or B == 0:
        e = torch.empty(0, dtype=torch.long, device=device)
        return e, e
    if p > SPARSE_MAX_P:
        centres = (_rand((B, L), generator, device) < p) & real_mask(end, L)
        rows, cols = centres.nonzero(as_tuple=True)
        return rows, cols
    K = block or int(math.ceil(L * p + 6 * math.sqrt(L * p * (1 - p)) + 4))
    at = _geometric((B, K), p, generator, device, L + 1).cumsum(1)
    while bool((at[:, -1] <= end).any()):  # some row not covered yet (probability ~1e-9 per row)
        at = torch.cat([at, at[:, -1:] + _geometric((B, K), p, generator, device, L + 1).cumsum(1)], 1)
    inside = at <= end[:, None]
    rows = inside.nonzero(as_tuple=True)[0]  # row-major, columns ascending
    return rows, at.masked_select(inside).long()


def _geometric(shape, p, generator, device, cap: int) -> torch.Tensor:
    """Geometric(p) gaps on {1, 2, ...} as float64 integers, by inversion of rand in [0, 1); capped at
    `cap` (a gap past the row end is as good as any larger one; also maps U = 0, log 0 = -inf, to cap)."""
    u = _rand(shape, generator, device, dtype=torch.float64)
    return u.log_().mul_(1.0 / math.log1p(-p)).ceil_().clamp_(1, cap)


def _rand(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    if generator.device.type != device.type:
        return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def _randint(lo, hi, shape, generator, device) -> torch.Tensor:
    if generator is None:
        return torch.randint(lo, hi, shape, device=device)
    gdev = generator.device if generator.device.type != device.type else device
    return torch.randint(lo, hi, shape, generator=generator, device=gdev).to(device)


@dataclass
class Masker:
    """A masking scheme; call it on a padded batch. Build it with `make_masker`, which holds the
    defaults (the fields have none, so that no second table of them can disagree)."""

    scheme: str
    k: int
    ranking: np.ndarray | None
    p: float
    high_rule: str
    high_radius: int
    ramp: float
    mask_prob: float
    random_prob: float
    global_p: float
    threshold: float
    switch_at: int | None
    faithful: bool

    def __post_init__(self):
        self._ranks = rank_table(self.ranking, self.k) if self.ranking is not None else None
        self._ranks_dev: dict = {}
        self.vocab_size = kmers.vocab_size(self.k)
        # cm_gems's plateau rule: last validation perplexity, smallest |difference| so far, switch step
        self._last_ppl: float | None = None
        self._min_diff = math.inf
        self.switch_step: int | None = self.switch_at

    def settings(self) -> dict:
        """The scheme and its options (JSON-ready), for recording next to a model."""
        return {"scheme": self.scheme, "k": self.k, "p": self.p, "high_rule": self.high_rule,
                "high_radius": self.high_radius, "ramp": self.ramp, "mask_prob": self.mask_prob,
                "random_prob": self.random_prob, "global_p": self.global_p, "threshold": self.threshold,
                "switch_at": self.switch_at, "faithful": self.faithful}

    def ranks(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._ranks_dev:
            self._ranks_dev[key] = self._ranks.to(device)
        return self._ranks_dev[key]

    def _pos_ranks(self, L: int, device) -> torch.Tensor | None:
        """`faithful`: the released code's rank of every position 0..L-1 (position used as token id)."""
        if not self.faithful:
            return None
        key = ("faithful", L, str(device))
        if key not in self._ranks_dev:
            table = faithful_rank_table(self.ranking, self.k).to(device)
            self._ranks_dev[key] = position_ranks(table, L, 4**self.k)
        return self._ranks_dev[key]

    # ---- cm_gems: the switch on a validation plateau ------------------------------------------------

    def observe_validation(self, step: int, perplexity: float) -> bool:
        """Report the validation perplexity measured after `step` training steps (cm_gems; a no-op for the
        other schemes). Returns True when this observation makes cm_gems switch: from then on every call
        with step >= `step` masks with global_pmi. The rule (the released code's): the smallest
        |difference| between consecutive validation perplexities so far is below `threshold`. A NaN
        perplexity (no masked token in the evaluation) never counts as a plateau. No-op once switched
        or when `switch_at` fixes the switch."""
        if self.scheme != "cm_gems" or self.switch_step is not None:
            return False
        ppl = float(perplexity)
        if self._last_ppl is not None:
            d = abs(ppl - self._last_ppl)
            if d < self._min_diff:  # False for NaN
                self._min_diff = d
        self._last_ppl = ppl
        if self._min_diff < self.threshold:
            self.switch_step = int(step)
            return True
        return False

    def state_dict(self) -> dict:
        """The masker's training-time state (cm_gems's plateau rule), for a checkpoint."""
        return {"last_perplexity": self._last_ppl, "min_diff": self._min_diff, "switch_step": self.switch_step}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore `state_dict()` (None or {}: nothing to restore, e.g. a checkpoint of an older version)."""
        if not state:
            return
        self._last_ppl = state.get("last_perplexity")
        self._min_diff = float(state.get("min_diff", math.inf))
        self.switch_step = state.get("switch_step", self.switch_step)

    def branch(self, step: int = 0, total_steps: int = 1, coin: torch.Tensor | None = None) -> str:
        """The scheme that masks at `step`: the masker's own, or for cm_step "global_pmi" / "dnabert" (by the
        coin: u < s(t)) and for cm_gems "genemask" / "global_pmi" (before / from `switch_step`)."""
        if self.scheme == "cm_step":
            if coin is None:
                raise ValueError("cm_step needs its coin draw")
            return "global_pmi" if float(coin.reshape(-1)[0]) < cm_step_share(step, total_steps) else "dnabert"
        if self.scheme == "cm_gems":
            return "global_pmi" if self.switch_step is not None and step >= self.switch_step else "genemask"
        return self.scheme

    def draw(self, input_ids: torch.Tensor, generator: torch.Generator | None = None, end=None,
             block: int | None = None, step: int = 0, total_steps: int = 1) -> Draws:
        """The scheme's random draws for the masked set (see the module docstring for their order).
        step, total_steps: cm_step / cm_gems, whose centre probability depends on the branch."""
        input_ids = _as_ids(input_ids)
        B, L = input_ids.shape
        dev = input_ids.device
        if end is None:
            end = row_ends(input_ids)
        if self.scheme == "random":  # per-token masking: always the dense draw
            return Draws((_rand((B, L), generator, dev) < self.p) & real_mask(end, L))
        if self.scheme in ("cm_step", "cm_gems"):
            coin = _rand((1,), generator, dev) if self.scheme == "cm_step" else None
            branch = self.branch(step, total_steps, coin)
            p = self.global_p if branch == "global_pmi" else self.p
            rows, cols = draw_centres(end, L, p, generator, dev, block=block)
            return Draws(None, rows=rows, cols=cols, shape=(B, L), coin=coin, branch=branch)
        rows, cols = draw_centres(end, L, self.p, generator, dev, block=block)
        if self.scheme == "curriculum":
            priority = _randint(0, 1 << PRIORITY_BITS, (rows.numel(),), generator, dev)
            return Draws(None, priority, _rand((B,), generator, dev), rows, cols, shape=(B, L))
        return Draws(None, rows=rows, cols=cols, shape=(B, L))

    def positions_from_draws(self, input_ids: torch.Tensor, draws: Draws, step: int = 0,
                             total_steps: int = 1, end=None) -> torch.Tensor:
        """The masked set (bool [B, L]) for given draws: deterministic."""
        input_ids = _as_ids(input_ids)
        s = self.scheme
        if end is None:
            end = row_ends(input_ids)
        B, L = input_ids.shape
        if s == "random":
            return draws.centres & real_mask(end, L)
        rows, cols = draws.rows, draws.cols
        if rows is None:
            rows, cols = (draws.centres & real_mask(end, L)).nonzero(as_tuple=True)
        if s in ("cm_step", "cm_gems"):
            s = draws.branch or self.branch(step, total_steps, draws.coin)
        faithful = self._pos_ranks(L, input_ids.device)  # None unless option `faithful`
        if s == "dnabert":
            c = Centres.of(rows, cols, end, L)
            return _spans_mask(B, L, span_indices(c.flat, c.first, c.last, *span_offsets(self.k)))
        if s == "global_pmi":
            return global_pmi_positions(input_ids, torch.bincount(rows, minlength=B), self.ranks(input_ids.device),
                                        k=self.k, radius=self.high_radius, pos_ranks=faithful, end=end)
        share = curriculum_share(step, total_steps, self.ramp) if s == "curriculum" else 1.0
        return genemask_positions(
            input_ids, rows, cols, self.ranks(input_ids.device), k=self.k, high_rule=self.high_rule,
            high_radius=self.high_radius, by_position=(s == "reference"), share=share,
            priority=draws.priority, jitter=draws.jitter, end=end,
            pos_ranks=faithful, centre_first=faithful is not None, sort_by_rank=faithful is None,
        )

    def mask_positions(self, input_ids: torch.Tensor, generator: torch.Generator | None = None,
                       step: int = 0, total_steps: int = 1) -> torch.Tensor:
        """The masked set only (bool [B, L]), before the 80/10/10 replacement."""
        input_ids = _as_ids(input_ids)
        end = row_ends(input_ids)
        draws = self.draw(input_ids, generator, end, step=step, total_steps=total_steps)
        return self.positions_from_draws(input_ids, draws, step, total_steps, end)

    def replace(self, input_ids: torch.Tensor, masked: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """80 % [MASK], 10 % random k-mer token, 10 % unchanged; labels -100 outside `masked`.

        Draws rand(n) then randint(5, V, (n,)) for the n masked tokens in row-major order.
        """
        input_ids = _as_ids(input_ids)
        dev = input_ids.device
        flat = _flat_nonzero(masked.reshape(-1))
        vals = input_ids.view(-1).index_select(0, flat)
        n = flat.numel()
        x = _rand((n,), generator, dev)
        rnd = _randint(kmers.N_SPECIAL, self.vocab_size, (n,), generator, dev)
        new = torch.where(x < self.mask_prob + self.random_prob, rnd, vals).masked_fill_(x < self.mask_prob, kmers.MASK)
        out = input_ids.clone()
        out.view(-1).index_copy_(0, flat, new)
        labels = torch.full_like(input_ids, IGNORE)
        labels.view(-1).index_copy_(0, flat, vals)
        return out, labels

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator | None = None, step: int = 0,
                 total_steps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = _as_ids(input_ids)
        masked = self.mask_positions(input_ids, generator, step, total_steps)
        return self.replace(input_ids, masked, generator)


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a 1-D bool tensor, ascending (numpy's scan is ~2x faster on CPU)."""
    if NUMPY_SORT and mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def _as_ids(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(x.shape)}")
    x = x if x.dtype == torch.long else x.long()
    return x.contiguous()


def make_masker(scheme: str, k: int = DEFAULT_K, ranking=None, **options) -> Masker:
    """A `Masker` for `scheme` (one of SCHEMES). `ranking`: NPMI rank per k-mer index (array of 4**k,
    e.g. `npmi.load_ranking`) or the path of an NPMI table; required by every scheme but random/dnabert.
    Options: p, high_rule ("all_if_le8" | "half"), high_radius (default k-1), ramp (curriculum,
    default 1.0), mask_prob (0.8), random_prob (0.1), global_p (cm_step / cm_gems's global_pmi branch,
    0.0136), threshold (cm_gems, DEFAULT_THRESHOLD), switch_at (cm_gems, null or a step), faithful
    (global_pmi / cm_step / cm_gems, false).
    """
    if scheme not in SCHEMES:
        raise GeneMaskError(f"scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if k not in kmers.SUPPORTED_K:
        raise GeneMaskError(f"k={k}: supported k-mer sizes are {', '.join(map(str, kmers.SUPPORTED_K))}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise GeneMaskError(f"masking option {unknown[0]!r}: unknown (known: {', '.join(OPTIONS)})")
    if isinstance(ranking, (str, os.PathLike)):
        from .npmi import load_ranking

        ranking = load_ranking(ranking, k=k)
    if scheme in NEEDS_RANKING and ranking is None:
        raise GeneMaskError(f"scheme {scheme!r} needs an NPMI ranking (--ranking)")
    given = {key: v for key, v in options.items() if v is not None}
    # types and ranges: the config schema's rules for pretrain.settings.masking (its one home)
    check_options(given, "pretrain.settings.masking", "masking", prefix="option")
    opts = {"p": DEFAULT_P[scheme], "high_radius": k - 1, **OPTION_DEFAULTS, **given}
    mp, rp = opts["mask_prob"], opts["random_prob"]
    if mp + rp > 1:  # a cross-check the schema cannot state
        raise GeneMaskError(f"masking options mask_prob={mp}, random_prob={rp}: need a sum <= 1")
    switch_at = opts["switch_at"]
    if opts["faithful"] and scheme not in FAITHFUL_SCHEMES:
        raise GeneMaskError(f"masking option faithful: only for {', '.join(FAITHFUL_SCHEMES)} "
                            f"(genemask's released defect is the scheme 'reference')")
    return Masker(scheme=scheme, k=k, ranking=None if ranking is None else np.asarray(ranking),
                  p=float(opts["p"]), high_rule=opts["high_rule"], high_radius=int(opts["high_radius"]),
                  ramp=float(opts["ramp"]), mask_prob=float(mp), random_prob=float(rp),
                  global_p=float(opts["global_p"]), threshold=float(opts["threshold"]),
                  switch_at=None if switch_at is None else int(switch_at), faithful=bool(opts["faithful"]))
