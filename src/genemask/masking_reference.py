"""Slow, obviously correct Python-loop versions of the masking schemes (for tests and the benchmark).

They follow the released DNABERT/GeneMask code's structure (per row, per centre, Python sets) and
take the same pre-drawn random matrices as `masking.Masker.positions_from_draws`, so the vectorised
code can be checked for exact equality. Never used in training.
"""
from __future__ import annotations

import math

import torch

from . import kmers
from .masking import Draws, curriculum_share, span_offsets


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


def loop_positions(input_ids: torch.Tensor, draws: Draws, scheme: str, k: int = 6, ranks=None,
                   high_rule: str = "all_if_le8", high_radius: int | None = None, step: int = 0,
                   total_steps: int = 1, ramp: float = 1.0) -> torch.Tensor:
    """The masked set (bool [B, L]) of `scheme` for pre-drawn `draws`, one row and one centre at a time.

    ranks: rank by token id (`masking.rank_table`), a tensor or list.
    """
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
        if scheme in ("genemask", "reference", "curriculum") and centres:
            info = []  # (best rank r(c), centre c, its position q(c))
            for c in centres:
                best_r, best_q = None, None
                for p in range(c + lo, c + hi + 1):  # left to right, strict '<': leftmost best wins
                    if 1 <= p <= end:
                        r = rank_at(row, p)
                        if best_r is None or r < best_r:
                            best_r, best_q = r, p
                info.append((best_r, c, best_q))
            m = len(info)
            n_high = m if (high_rule == "all_if_le8" and m <= 8) else math.ceil(m / 2)
            by_npmi = sorted(info)
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


def loop_mask(input_ids: torch.Tensor, masker, generator: torch.Generator | None = None, step: int = 0,
              total_steps: int = 1) -> torch.Tensor:
    """A masker's masked set computed by the loop implementation from the masker's own draws."""
    draws = masker.draw(input_ids, generator)
    draws = Draws(draws.centres, draws.priority, draws.jitter)  # the loop re-derives the centre list
    ranks = masker.ranks("cpu") if masker.ranking is not None else None
    return loop_positions(input_ids, draws, masker.scheme, k=masker.k, ranks=ranks, high_rule=masker.high_rule,
                          high_radius=masker.high_radius, step=step, total_steps=total_steps, ramp=masker.ramp)
