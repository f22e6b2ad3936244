"""The test oracle of masking.py: slow, obviously correct Python-loop versions of the masking schemes
(for tests and the benchmark). Not the `reference` scheme (masking.py's released-defect ablation):
an oracle for every scheme.

They follow the released DNABERT/GeneMask code's structure (per row, per centre, Python sets) and
take the same pre-drawn random matrices as `masking.Masker.positions_from_draws`, so the vectorised
code can be checked for exact equality. Never used in training.
"""
from __future__ import annotations

import math

import torch

from . import kmers
from .masking import DEFAULT_K, Draws, curriculum_share, span_offsets


def _cm_step_global(coin: float, step: int, total_steps: int) -> bool:
    """cm_step's coin: global_pmi when coin < s(t), s(t) = floor(t / floor(T/100)) / 100 capped at 1
    (T < 100: floor(100 t / T) / 100), written out separately from `masking.cm_step_share`."""
    if total_steps <= 0:
        s = 1.0
    elif total_steps >= 100:
        s = min(1.0, math.floor(max(step, 0) / math.floor(total_steps / 100)) / 100)
    else:
        s = min(1.0, math.floor(100 * max(step, 0) / total_steps) / 100)
    return coin < s


def _end(row: list[int]) -> int:
    """Last real token position: n = 1 + position of the last non-[PAD] token; n - 2 when that token is
    [SEP], else n - 1 (a truncated row)."""
    n = 0
    for i, t in enumerate(row):
        if t != kmers.PAD:
            n = i + 1
    if n > 0 and row[n - 1] == kmers.SEP:
        return n - 2
    return n - 1


def loop_positions(input_ids: torch.Tensor, draws: Draws, scheme: str, k: int = DEFAULT_K, ranks=None,
                   high_rule: str = "all_if_le8", high_radius: int | None = None, step: int = 0,
                   total_steps: int = 1, ramp: float = 1.0, faithful: bool = False,
                   switch_step: int | None = None) -> torch.Tensor:
    """The masked set (bool [B, L]) of `scheme` for pre-drawn `draws`, one row and one centre at a time.

    ranks: rank by token id (`masking.rank_table`), a tensor or list. cm_step: `draws.coin` and the step
    pick the branch; cm_gems: global_pmi from `switch_step` on. faithful: the released curriculum
    code (rank of the token id equal to the position; 4**k for an id without a k-mer rank; in cm_gems's
    genemask branch the minimum starts at the centre and the high centres are the first ones by position).
    """
    if scheme == "cm_step":
        scheme = "global_pmi" if _cm_step_global(float(draws.coin[0]), step, total_steps) else "dnabert"
    elif scheme == "cm_gems":
        scheme = "global_pmi" if switch_step is not None and step >= switch_step else "cm_gems_genemask"
    if scheme == "global_pmi":
        return _loop_global_pmi(input_ids, draws, k, ranks, high_radius, faithful)
    ids = input_ids.tolist()
    C = draws.centres.tolist()
    U = draws.priority.tolist() if draws.priority is not None else None  # one per centre, row-major
    u_next = 0
    J = draws.jitter.tolist() if draws.jitter is not None else None
    rank_list = ranks.tolist() if isinstance(ranks, torch.Tensor) else (list(ranks) if ranks is not None else None)
    worst = 4**k + 1
    lo, hi = span_offsets(k)
    R = k - 1 if high_radius is None else high_radius
    share = curriculum_share(step, total_steps, ramp) if scheme == "curriculum" else 1.0
    out = torch.zeros(input_ids.shape, dtype=torch.bool)

    def rank_at(row, p):
        if scheme == "reference":  # the released code's defect: the position is used as a token id
            return rank_list[p] if p < len(rank_list) else worst
        if faithful:
            return _faithful_rank(rank_list, p, k)
        return rank_list[row[p]]

    for i, row in enumerate(ids):
        end = _end(row)
        centres = [c for c in range(1, end + 1) if C[i][c]]
        if U is not None:
            prio = dict(zip(centres, U[u_next : u_next + len(centres)]))
            u_next += len(centres)
        masked = set()
        if scheme == "random":
            masked = set(centres)
        else:
            for c in centres:  # DNABERT span of every centre
                for p in range(c + lo, c + hi + 1):
                    if 1 <= p <= end:
                        masked.add(p)
        if scheme in ("genemask", "reference", "curriculum", "cm_gems_genemask") and centres:
            info = []  # (best rank r(c), centre c, its position q(c))
            for c in centres:
                best_r, best_q = None, None
                if faithful:  # the release: the minimum starts at the centre, then the other offsets in order
                    best_r, best_q = rank_at(row, c), c
                for p in range(c + lo, c + hi + 1):  # left to right, strict '<': leftmost best wins
                    if 1 <= p <= end:
                        r = rank_at(row, p)
                        if best_r is None or r < best_r:
                            best_r, best_q = r, p
                info.append((best_r, c, best_q))
            m = len(info)
            n_high = m if (high_rule == "all_if_le8" and m <= 8) else math.ceil(m / 2)
            by_npmi = info if faithful else sorted(info)  # faithful: the first half before sorting
            if share >= 1.0:
                anchors = [q for _, _, q in by_npmi[:n_high]]
            else:
                n_npmi = min(n_high, math.floor(share * n_high + J[i]))
                anchors = [q for _, _, q in by_npmi[:n_npmi]]
                rest = sorted((prio[c], c) for _, c, _ in by_npmi[n_npmi:])
                anchors += [c for _, c in rest[: n_high - n_npmi]]
            for a in anchors:
                for p in range(a - R, a + R + 1):
                    if 1 <= p <= end:
                        masked.add(p)
        out[i, sorted(masked)] = True  # one write per row, as the released code does
    return out


def _faithful_rank(rank_list: list, token_id: int, k: int) -> int:
    """The released curriculum code's `kmer_id_to_pmi_rank`: the rank of the k-mer with this id; 4**k
    (4096) for an id that is no k-mer (special, beyond the vocabulary), a k-mer without a rank
    (rank_table's 4**k + 1) or rank 0."""
    worst = 4**k + 1
    if token_id < kmers.N_SPECIAL or token_id >= len(rank_list) or rank_list[token_id] in (0, worst):
        return 4**k
    return rank_list[token_id]


def _loop_global_pmi(input_ids, draws, k, ranks, high_radius, faithful) -> torch.Tensor:
    """global_pmi, per row: sort the real positions by (rank, position), keep as many as the row has
    drawn centres, mask the 11-token span around each (the drawn centres themselves are dropped)."""
    ids = input_ids.tolist()
    C = draws.centres.tolist()
    rank_list = ranks.tolist() if isinstance(ranks, torch.Tensor) else list(ranks)
    R = k - 1 if high_radius is None else high_radius
    out = torch.zeros(input_ids.shape, dtype=torch.bool)
    for i, row in enumerate(ids):
        end = _end(row)
        count = sum(1 for c in range(1, end + 1) if C[i][c])
        pairs = []
        for p in range(1, end + 1):
            pairs.append((_faithful_rank(rank_list, p, k) if faithful else rank_list[row[p]], p))
        masked = set()
        for _, q in sorted(pairs)[:count]:
            for p in range(q - R, q + R + 1):
                if 1 <= p <= end:
                    masked.add(p)
        out[i, sorted(masked)] = True
    return out


def loop_mask(input_ids: torch.Tensor, masker, generator: torch.Generator | None = None, step: int = 0,
              total_steps: int = 1) -> torch.Tensor:
    """A masker's masked set computed by the loop implementation from the masker's own draws."""
    draws = masker.draw(input_ids, generator, step=step, total_steps=total_steps)
    draws = Draws(draws.centres, draws.priority, draws.jitter, coin=draws.coin)  # the loop re-derives the rest
    ranks = masker.ranks("cpu") if masker.ranking is not None else None
    return loop_positions(input_ids, draws, masker.scheme, k=masker.k, ranks=ranks, high_rule=masker.high_rule,
                          high_radius=masker.high_radius, step=step, total_steps=total_steps, ramp=masker.ramp,
                          faithful=masker.faithful, switch_step=masker.switch_step)
