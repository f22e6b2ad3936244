"""Masking schemes: invariants (property-based), exact equality with the loop implementation,
masked fractions on real hg38 sequence, 80/10/10 replacement, seeding (mask-stats: test_maskstats.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genemask import kmers, masking, maskstats
from genemask.masking import Draws, make_masker, rank_table, real_positions, span_offsets
from genemask.masking_oracle import loop_mask, loop_positions
from genemask.npmi import load_ranking
from genemask.tokenizer import encode_sequences
from genemask.util import GeneMaskError

SETTINGS = dict(deadline=None, max_examples=200)


@pytest.fixture(scope="module")
def ranking(data_a):
    return load_ranking(data_a, k=6)


@pytest.fixture(scope="module")
def real_ids(hg38_slice):
    """2000 full-length (511 bp = 506 tokens) N-free pieces of hg38 chr2."""
    pieces = maskstats.cut_pieces(hg38_slice, 2000)
    assert len(pieces) == 2000 and all(len(p) == 511 for p in pieces)
    ids = encode_sequences(6, [p.decode() for p in pieces])["input_ids"]
    assert ids.shape == (2000, 508) and (ids[:, 1:507] >= 5).all()
    return ids


# ---- strategies ------------------------------------------------------------------------------------

@st.composite
def batches(draw, k=None, max_len=80):
    """A padded batch `[CLS] t1..tn [SEP] [PAD]...` (sometimes a truncated row without [SEP]) whose tokens
    come from a small pool (repeats force rank ties; [UNK] included), plus a seed for the draws."""
    k = draw(st.sampled_from([3, 4, 5, 6])) if k is None else k
    B = draw(st.integers(1, 6))
    L = draw(st.integers(2, max_len))
    lengths = draw(st.lists(st.integers(0, L - 2), min_size=B, max_size=B))
    truncated = draw(st.booleans()) and L > 2
    seed = draw(st.integers(0, 2**31 - 1))
    pool_size = draw(st.integers(1, 40))
    g = torch.Generator().manual_seed(seed)
    pool = torch.randint(kmers.N_SPECIAL, kmers.vocab_size(k), (pool_size,), generator=g)
    if draw(st.booleans()):
        pool[0] = kmers.UNK
    ids = pool[torch.randint(0, pool_size, (B, L), generator=g)]
    pos = torch.arange(L)
    n = torch.tensor(lengths)
    ids[:, 0] = kmers.CLS
    ids = torch.where(pos[None] > n[:, None] + 1, kmers.PAD, ids)
    ids[torch.arange(B), n + 1] = kmers.SEP
    if truncated:  # last row fills the width and has no [SEP]
        ids[-1, 1:] = pool[torch.randint(0, pool_size, (L - 1,), generator=g)]
    return k, ids, seed


def rankings(k, seed, tied):
    g = torch.Generator().manual_seed(seed + 1)
    if tied:  # few distinct ranks: exercises the tie-breaking rules
        return torch.randint(1, 12, (4**k,), generator=g).numpy()
    return (torch.randperm(4**k, generator=g) + 1).numpy()


def expected_end(row: list[int]) -> int:
    """Position of the closing [SEP] - 1 (rows are [CLS] t1..tn [SEP] [PAD]...), or the last position of a
    truncated row without [SEP]."""
    if kmers.SEP in row:
        return row.index(kmers.SEP) - 1
    return len(row) - 1


# ---- basic contract --------------------------------------------------------------------------------

def test_span_offsets_match_dnabert_mask_list():
    mask_list = {3: [-1, 1], 4: [-1, 1, 2], 5: [-2, -1, 1, 2], 6: [-2, -1, 1, 2, 3]}
    for k, offs in mask_list.items():
        lo, hi = span_offsets(k)
        assert list(range(lo, hi + 1)) == sorted(offs + [0])  # the centre plus DNABERT's offsets: k tokens


def test_make_masker_errors(ranking):
    with pytest.raises(GeneMaskError, match="scheme 'bert'"):
        make_masker("bert")
    for s in ("genemask", "reference", "curriculum"):
        with pytest.raises(GeneMaskError, match="needs an NPMI ranking"):
            make_masker(s)
    with pytest.raises(GeneMaskError, match="option 'foo'"):
        make_masker("dnabert", foo=1)
    with pytest.raises(GeneMaskError, match="high_rule"):
        make_masker("genemask", ranking=ranking, high_rule="third")
    with pytest.raises(GeneMaskError, match="4096 ranks"):
        make_masker("genemask", ranking=ranking[:10])
    with pytest.raises(GeneMaskError, match="ramp"):
        make_masker("curriculum", ranking=ranking, ramp=0)
    assert masking.SCHEMES == ("random", "dnabert", "genemask", "reference", "curriculum", "global_pmi", "cm_step",
                               "cm_gems")


def test_ranking_from_path(data_a, ranking):
    m = make_masker("genemask", ranking=data_a)
    assert np.array_equal(m.ranking, ranking)
    assert m.settings()["high_rule"] == "all_if_le8" and m.high_radius == 5


def test_real_positions():
    ids = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 3, 0, 0, 0, 0], [2, 5, 5, 5, 5, 5]])
    real, end = real_positions(ids)
    assert end.tolist() == [3, 0, 5]
    assert real.tolist() == [[False, True, True, True, False, False], [False] * 6, [False] + [True] * 5]
    # n = 1 + position of the last non-[PAD] token, on both paths: full-width batch (no [B, L] scan) and
    # a batch with a padded row; an interior [PAD] does not end a row; an all-[PAD] row has end -1
    full = torch.tensor([[2, 5, 0, 6, 3], [2, 5, 6, 7, 8]])
    assert masking.row_ends(full).tolist() == [3, 4]
    mixed = torch.tensor([[2, 5, 0, 6, 3], [2, 5, 6, 7, 8], [2, 5, 3, 0, 0], [0, 0, 0, 0, 0]])
    assert masking.row_ends(mixed).tolist() == [3, 4, 1, -1]
    from genemask.masking_oracle import _end
    assert [_end(r) for r in mixed.tolist()] == [3, 4, 1, -1]


# ---- invariants ------------------------------------------------------------------------------------

@settings(**SETTINGS)
@given(batches(), st.sampled_from(masking.SCHEMES), st.floats(0.0, 0.6))
def test_never_masks_specials_and_spans_clipped(batch, scheme, p):
    k, ids, seed = batch
    m = make_masker(scheme, k=k, ranking=rankings(k, seed, False), p=p)
    g = torch.Generator().manual_seed(seed)
    out, labels = m(ids, g, step=seed % 5, total_steps=4)
    masked = labels != -100
    for i, row in enumerate(ids.tolist()):
        end = expected_end(row)
        cols = torch.nonzero(masked[i]).flatten().tolist()
        assert all(1 <= c <= end for c in cols)  # inside [1, end]: never [CLS] / [SEP] / [PAD]
    special = (ids == kmers.CLS) | (ids == kmers.SEP) | (ids == kmers.PAD)
    assert not masked[special].any()
    assert torch.equal(out[special], ids[special])
    assert torch.equal(out[~masked], ids[~masked])
    assert torch.equal(labels[masked], ids[masked])
    changed = masked & (out != ids) & (out != kmers.MASK)
    assert (out[changed] >= kmers.N_SPECIAL).all() and (out[changed] < kmers.vocab_size(k)).all()


@settings(**SETTINGS)
@given(batches(k=6, max_len=120), st.floats(0.01, 0.3), st.booleans())
def test_genemask_spans_centred_on_best_npmi(batch, p, tied):
    """Every high centre's 11-span is q(c)-5..q(c)+5 clipped, q(c) the best-ranked token of c-2..c+3."""
    k, ids, seed = batch
    rk = rankings(k, seed, tied)
    ranks = rank_table(rk, k).tolist()
    for rule in ("all_if_le8", "half"):
        m = make_masker("genemask", ranking=rk, p=p, high_rule=rule)
        draws = m.draw(ids, torch.Generator().manual_seed(seed))
        masked = m.positions_from_draws(ids, draws)
        dn = make_masker("dnabert").positions_from_draws(ids, draws)
        assert not (dn & ~masked).any()  # every centre masks its DNABERT span
        for i, row in enumerate(ids.tolist()):
            end = expected_end(row)
            cs = torch.nonzero(draws.centres[i]).flatten().tolist()
            best = []
            for c in cs:
                nb = [q for q in range(c - 2, c + 4) if 1 <= q <= end]
                r = min(ranks[row[q]] for q in nb)
                q = min(q for q in nb if ranks[row[q]] == r)  # leftmost among ties
                best.append((r, c, q))
            n_high = len(cs) if (rule == "all_if_le8" and len(cs) <= 8) else math.ceil(len(cs) / 2)
            high = sorted(best)[:n_high]
            wide = set()
            for _, _, q in high:
                span = {x for x in range(q - 5, q + 6) if 1 <= x <= end}
                assert all(masked[i, x] for x in span)
                wide |= span
            # nothing else is masked: DNABERT spans plus the 11-spans around the high q(c)
            extra = set(torch.nonzero(masked[i] & ~dn[i]).flatten().tolist())
            assert extra <= wide


# ---- exact equality with the slow loop implementation ----------------------------------------------

@settings(deadline=None, max_examples=600)
@given(batches(), st.sampled_from(masking.SCHEMES), st.sampled_from(["all_if_le8", "half"]),
       st.floats(0.01, 0.5), st.booleans(), st.integers(0, 12), st.sampled_from([None, 1, 3]))
def test_equals_loop_implementation(batch, scheme, rule, p, tied, step, block):
    k, ids, seed = batch
    rk = rankings(k, seed, tied)
    m = make_masker(scheme, k=k, ranking=rk, p=p, high_rule=rule, ramp=0.8)
    draws = m.draw(ids, torch.Generator().manual_seed(seed), block=block, step=step, total_steps=10)  # block: force extra gap blocks
    if draws.rows is not None:
        assert torch.equal(torch.stack(torch.nonzero(draws.centres, as_tuple=True)), torch.stack([draws.rows, draws.cols]))
        draws = Draws(draws.centres, draws.priority, draws.jitter, coin=draws.coin)  # also the path that derives the centre list
    fast = m.positions_from_draws(ids, draws, step=step, total_steps=10)
    slow = loop_positions(ids, draws, scheme, k=k, ranks=m.ranks("cpu"), high_rule=rule, high_radius=k - 1,
                          step=step, total_steps=10, ramp=0.8)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("scheme,options", [
    ("dnabert", {}), ("genemask", {}), ("reference", {}), ("curriculum", {}), ("global_pmi", {}),
    ("global_pmi", {"faithful": True}), ("cm_step", {}), ("cm_step", {"faithful": True}), ("cm_gems", {}),
    ("cm_gems", {"faithful": True}), ("cm_gems", {"switch_at": 2}), ("cm_gems", {"switch_at": 2, "faithful": True}),
])
@pytest.mark.parametrize("numpy_sort", [True, False])  # False: torch.sort, the path taken on a GPU
def test_equals_loop_on_real_batches(real_ids, ranking, scheme, options, numpy_sort, monkeypatch):
    monkeypatch.setattr(masking, "NUMPY_SORT", numpy_sort)
    m = make_masker(scheme, ranking=ranking, **options)
    for b in range(4):
        ids = real_ids[b * 64 : (b + 1) * 64]
        g1, g2 = torch.Generator().manual_seed(b), torch.Generator().manual_seed(b)
        assert torch.equal(m.mask_positions(ids, g1, step=b, total_steps=3), loop_mask(ids, m, g2, step=b, total_steps=3))


@pytest.mark.parametrize("p,block", [(0.0176, None), (0.025, None), (0.05, 2), (0.3, None)])
def test_centre_draws_are_bernoulli(p, block):
    """The gap-based centre draw has the law of independent Bernoulli(p) per real position."""
    B, L = 4000, 300
    ids = torch.full((B, L), 7)
    n = torch.randint(0, L - 1, (B,), generator=torch.Generator().manual_seed(0))
    n[: B // 2] = L - 2
    pos = torch.arange(L)
    ids[:, 0] = kmers.CLS
    ids = torch.where(pos[None] > n[:, None] + 1, kmers.PAD, ids)
    ids[torch.arange(B), n + 1] = kmers.SEP
    m = make_masker("dnabert", p=p)
    c = m.draw(ids, torch.Generator().manual_seed(1), block=block).centres
    real, _ = real_positions(ids)
    assert not (c & ~real).any()
    full = c[: B // 2, 1 : L - 1].double()  # full-length rows: 298 positions each
    per_pos = full.mean(0)
    sd = math.sqrt(p * (1 - p) / (B // 2))
    assert abs(per_pos.mean().item() - p) < 4 * sd / math.sqrt(L - 2)
    assert (per_pos - p).abs().max().item() < 5 * sd  # no position favoured (start, end, block edges)
    counts = full.sum(1)
    assert abs(counts.var().item() / ((L - 2) * p * (1 - p)) - 1) < 0.12  # binomial variance
    # neighbours independent: P(centre at i and i+1) = p^2
    both = (full[:, 1:] * full[:, :-1]).mean().item()
    assert abs(both - p * p) < 5 * math.sqrt(p * p / ((B // 2) * (L - 3)))
    assert abs(c[B // 2 :].sum().item() / real[B // 2 :].sum().item() - p) < 5 * sd


# ---- fractions on real sequence --------------------------------------------------------------------

@pytest.mark.parametrize("scheme,options,lo,hi", [
    ("random", {}, 0.145, 0.155),
    ("dnabert", {}, 0.136, 0.144),      # spec: 14.0 %
    ("genemask", {}, 0.149, 0.157),     # spec: 15.3 % (all centres high when m <= 8)
    ("genemask", {"high_rule": "half"}, 0.137, 0.145),  # spec: 14.1 %
    ("reference", {}, 0.149, 0.157),
    # the best-ranked positions of a row cluster (repeats such as GTGTGT...), so their 11-spans overlap:
    # README "Masking schemes": 11.47 % (faithful: the same positions in every row, 10.19 %)
    ("global_pmi", {}, 0.108, 0.121),
    ("global_pmi", {"faithful": True}, 0.097, 0.107),
    ("cm_gems", {}, 0.149, 0.157),                   # before the switch: genemask
    ("cm_gems", {"faithful": True}, 0.149, 0.157),   # its released genemask branch: same budget
    ("cm_gems", {"switch_at": 0}, 0.108, 0.121),     # after the switch: global_pmi
])
def test_masked_fraction_full_length(real_ids, ranking, scheme, options, lo, hi):
    m = make_masker(scheme, ranking=ranking, **options)
    masked = m.mask_positions(real_ids, torch.Generator().manual_seed(7))
    frac = masked.sum().item() / (real_ids.shape[0] * 506)
    assert lo <= frac <= hi, frac


def test_genemask_masks_higher_npmi_than_dnabert(real_ids, ranking):
    ranks = rank_table(ranking, 6)
    r = {}
    for s in ("dnabert", "genemask", "reference"):
        masked = make_masker(s, ranking=ranking).mask_positions(real_ids, torch.Generator().manual_seed(3))
        r[s] = ranks[real_ids[masked]].double().mean().item()
    # about -30 ranks on average (the wide spans also cover the chosen k-mer's ordinary neighbours);
    # seed-to-seed spread of these means is about +-6
    assert r["genemask"] < r["dnabert"] - 15, r
    assert abs(r["reference"] - r["dnabert"]) < 15, r  # the released defect ignores the DNA


def test_curriculum_schedule(real_ids, ranking):
    assert masking.curriculum_share(0, 100) == 0.0
    assert masking.curriculum_share(50, 100) == 0.5
    assert masking.curriculum_share(100, 100) == 1.0
    assert masking.curriculum_share(25, 100, ramp=0.5) == 0.5
    assert masking.curriculum_share(80, 100, ramp=0.5) == 1.0
    ids = real_ids[:500]
    cur = make_masker("curriculum", ranking=ranking)
    gm = make_masker("genemask", ranking=ranking)
    ranks = rank_table(ranking, 6)
    draws = cur.draw(ids, torch.Generator().manual_seed(1))
    # s = 1 is exactly genemask on the same centres
    assert torch.equal(cur.positions_from_draws(ids, draws, 10, 10), gm.positions_from_draws(ids, draws))
    # constant budget, ranks of masked tokens improve with s
    fr, mr = [], []
    for step in (0, 5, 10):
        mk = cur.positions_from_draws(ids, draws, step, 10)
        fr.append(mk.float().mean().item())
        mr.append(ranks[ids[mk]].double().mean().item())
    assert max(fr) - min(fr) < 0.002 * 512 / 506 + 0.003
    assert mr[0] > mr[1] > mr[2]
    # s = 0 does not look at the ranking
    other = make_masker("curriculum", ranking=rankings(6, 0, False))
    assert torch.equal(other.positions_from_draws(ids, draws, 0, 10), cur.positions_from_draws(ids, draws, 0, 10))


def test_reference_ignores_dna(ranking):
    g = torch.Generator().manual_seed(0)
    a = torch.randint(5, 4101, (8, 300), generator=g)
    b = torch.randint(5, 4101, (8, 300), generator=g)
    for x in (a, b):
        x[:, 0], x[:, -1] = kmers.CLS, kmers.SEP
    m = make_masker("reference", ranking=ranking, p=0.05)
    draws = m.draw(a, torch.Generator().manual_seed(1))
    assert torch.equal(m.positions_from_draws(a, draws), m.positions_from_draws(b, draws))
    gm = make_masker("genemask", ranking=ranking, p=0.05)
    assert not torch.equal(gm.positions_from_draws(a, draws), gm.positions_from_draws(b, draws))


# ---- replacement and seeding -----------------------------------------------------------------------

def test_80_10_10(real_ids, ranking):
    m = make_masker("genemask", ranking=ranking)
    out, labels = m(real_ids.clone(), torch.Generator().manual_seed(11))
    masked = labels != -100
    n = masked.sum().item()
    assert n > 100_000
    to_mask = (out == kmers.MASK) & masked
    kept = (out == real_ids) & masked
    rnd = masked & ~to_mask & ~kept
    assert abs(to_mask.sum().item() / n - 0.8) < 0.01
    assert abs(rnd.sum().item() / n - 0.1) < 0.01
    assert abs(kept.sum().item() / n - 0.1) < 0.01
    assert (out[rnd] >= kmers.N_SPECIAL).all()
    assert torch.equal(out[~masked], real_ids[~masked])


def test_random_replacements_never_special(ranking):
    ids = torch.full((64, 512), 5)
    ids[:, 0], ids[:, -1] = kmers.CLS, kmers.SEP
    m = make_masker("random", p=1.0, mask_prob=0.0, random_prob=1.0)
    out, labels = m(ids, torch.Generator().manual_seed(0))
    inner = out[:, 1:-1]
    assert (labels[:, 1:-1] == 5).all() and (inner >= kmers.N_SPECIAL).all() and (inner < 4101).all()
    assert len(torch.unique(inner)) > 4000  # uniform over the k-mer tokens


@pytest.mark.parametrize("scheme", masking.SCHEMES)
def test_same_seed_same_masks(real_ids, ranking, scheme):
    m = make_masker(scheme, ranking=ranking)
    ids = real_ids[:32]
    a = m(ids, torch.Generator().manual_seed(5), step=3, total_steps=10)
    b = m(ids, torch.Generator().manual_seed(5), step=3, total_steps=10)
    c = m(ids, torch.Generator().manual_seed(6), step=3, total_steps=10)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, real_ids[:32])  # input not modified


# sha256 (first 16 hex digits) of (masked ids, labels) for the first 32 real pieces, seed 5, step 3 of 10.
# The random, dnabert, genemask and reference digests have not changed since the first release of the
# schemes (the gaps by inversion reproduce torch's geometric_ draw for draw); curriculum changed once,
# when its priorities became integers. Update a digest only for a deliberate change of the random
# stream: it changes every model pretrained with that scheme.
PINNED_DIGESTS = {"random": "0011ba3c104fde64", "dnabert": "709632bf062fdcc6", "genemask": "e166e8b9965bbb2a",
                  "reference": "d9fbde82ce64823c", "curriculum": "dec8192d4cdaff92",
                  # cm_step at s(3 of 10) = 0.03: its coin picks dnabert; cm_gems before any switch is
                  # genemask draw for draw (same digest); global_pmi and the variants: test below
                  "global_pmi": "2a5510c2aeb36148", "cm_step": "9f4e5f06846ccea3", "cm_gems": "e166e8b9965bbb2a"}


@pytest.mark.parametrize("scheme", masking.SCHEMES)
def test_masks_pinned_across_versions(real_ids, ranking, scheme):
    import hashlib

    out, lab = make_masker(scheme, ranking=ranking)(real_ids[:32], torch.Generator().manual_seed(5), step=3,
                                                    total_steps=10)
    digest = hashlib.sha256(out.numpy().tobytes() + lab.numpy().tobytes()).hexdigest()[:16]
    assert digest == PINNED_DIGESTS[scheme]


def test_input_dtypes(ranking):
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 3, 0]])
    m = make_masker("genemask", ranking=ranking, p=0.5)
    a = m.mask_positions(ids, torch.Generator().manual_seed(0))
    b = m.mask_positions(ids.to(torch.int32), torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


# ---- the authors' curriculum schemes (spec section 5b): global_pmi, cm_step, cm_gems -------------------

def curriculum_rankings(k, seed, kind):
    """Rankings for the 5b schemes: a permutation, few distinct ranks (ties), two ranks (ties everywhere),
    or a table with missing k-mers (rank 4**k + 1, as `load_ranking` gives them) and rank 0 (which the
    release maps to 4096)."""
    if kind == "binary":
        return np.random.default_rng(seed).integers(1, 3, 4**k)
    if kind == "holes":
        rk = rankings(k, seed, False).copy()
        g = np.random.default_rng(seed)
        rk[g.random(4**k) < 0.2] = 4**k + 1
        rk[g.random(4**k) < 0.05] = 0
        return rk
    return rankings(k, seed, kind == "tied")


@settings(deadline=None, max_examples=400)
@given(batches(), st.sampled_from(["global_pmi", "cm_step", "cm_gems"]), st.booleans(),
       st.sampled_from(["perm", "tied", "binary", "holes"]), st.sampled_from(["all_if_le8", "half"]), st.floats(0.01, 0.5),
       st.integers(0, 12), st.sampled_from([None, 0, 4]), st.booleans())
def test_curriculum_schemes_equal_loop(batch, scheme, faithful, kind, rule, p, step, switch_at, interior_pad):
    """Fast == loop on random batches (right padding, short and empty rows, a truncated row, an interior
    [PAD] or two), every branch (cm_step's coin over the schedule, cm_gems before / after its switch)."""
    k, ids, seed = batch
    if interior_pad and ids.shape[1] > 4:
        ids = ids.clone()
        ids[0, 2] = kmers.PAD
        ids[-1, ids.shape[1] // 2] = kmers.PAD
    rk = curriculum_rankings(k, seed, kind)
    m = make_masker(scheme, k=k, ranking=rk, p=p, global_p=p / 2, high_rule=rule, faithful=faithful,
                    switch_at=switch_at)
    total = 1 + seed % 200  # both sides of T = 100 for cm_step's schedule
    draws = m.draw(ids, torch.Generator().manual_seed(seed), step=step, total_steps=total)
    fast = m.positions_from_draws(ids, draws, step=step, total_steps=total)
    loop_draws = Draws(draws.centres, coin=draws.coin)  # the loop re-derives the branch from the coin / step
    slow = loop_positions(ids, loop_draws, scheme, k=k, ranks=m.ranks("cpu"), high_rule=rule, high_radius=k - 1,
                          step=step, total_steps=total, faithful=faithful, switch_step=switch_at)
    assert torch.equal(fast, slow)
    real, _ = real_positions(ids)
    assert not (fast & ~real).any()


def test_curriculum_scheme_options_validated(ranking):
    for scheme in ("global_pmi", "cm_step", "cm_gems"):
        with pytest.raises(GeneMaskError, match="needs an NPMI ranking"):
            make_masker(scheme)
    # ranges and types: the schema's rules (pretrain.settings.masking), one line naming the option
    bad = [({"faithful": "yes"}, "option 'faithful': 'yes' is not of type 'boolean'"),
           ({"faithful": 1}, "option 'faithful': 1 is not of type 'boolean'"),
           ({"threshold": -1}, "option 'threshold': -1 is less than the minimum of 0"),
           ({"threshold": "low"}, "option 'threshold': 'low' is not of type 'number'"),
           ({"switch_at": -3}, "option 'switch_at': -3 is less than the minimum"),
           ({"switch_at": 2.5}, "option 'switch_at': 2.5 is not of type 'integer'"),
           ({"switch_at": True}, "option 'switch_at': True is not of type 'integer'"),
           ({"global_p": 1.5}, "option 'global_p': 1.5 is greater than the maximum of 1"),
           ({"mask_prob": 0.6, "random_prob": 0.6}, "mask_prob=0.6, random_prob=0.6: need a sum <= 1"),
           ({"thresh": 1.0}, "masking option 'thresh': unknown")]
    for opts, msg in bad:
        with pytest.raises(GeneMaskError, match=msg):
            make_masker("cm_gems", ranking=ranking, **opts)
    with pytest.raises(GeneMaskError, match="faithful: only for global_pmi, cm_step, cm_gems"):
        make_masker("genemask", ranking=ranking, faithful=True)
    m = make_masker("cm_gems", ranking=ranking)
    assert (m.p, m.global_p, m.threshold, m.switch_at, m.faithful) == (0.0176, 0.0136, masking.DEFAULT_THRESHOLD, None, False)
    assert make_masker("global_pmi", ranking=ranking).p == 0.0136 and make_masker("cm_step", ranking=ranking).p == 0.025
    assert m.settings()["threshold"] == 1.0 and m.settings()["faithful"] is False
    # from the CLI, values are YAML scalars
    assert make_masker("cm_gems", ranking=ranking, **maskstats.parse_options(["faithful=true", "switch_at=0"])).faithful


def test_global_pmi_masks_best_ranked_positions(real_ids, ranking):
    """Each row: as many 11-spans as drawn centres, around its best-ranked positions (ties leftmost)."""
    ids = real_ids[:200]
    m = make_masker("global_pmi", ranking=ranking)
    draws = m.draw(ids, torch.Generator().manual_seed(2))
    masked = m.positions_from_draws(ids, draws)
    ranks = rank_table(ranking, 6)
    counts = draws.centres.sum(1)
    for i in range(0, 200, 20):
        r = ranks[ids[i, 1:507]]
        best = sorted(zip(r.tolist(), range(1, 507)))[: int(counts[i])]
        expect = torch.zeros(508, dtype=torch.bool)
        for _, q in best:
            expect[max(1, q - 5) : min(506, q + 5) + 1] = True
        assert torch.equal(masked[i], expect)
    # much higher-NPMI tokens than genemask (README: mean rank 937 vs 1344)
    rm = ranks[ids[masked]].double().mean().item()
    gm = make_masker("genemask", ranking=ranking).mask_positions(ids, torch.Generator().manual_seed(2))
    assert rm < ranks[ids[gm]].double().mean().item() - 250


def test_faithful_global_pmi_ignores_dna(ranking):
    """The released defect: ranks by position, so rows of one length and one centre count get the same
    masked set whatever their DNA, and a longer count only adds spans (nested sets)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 4101, (64, 300), generator=g)
    ids[:, 0], ids[:, -1] = kmers.CLS, kmers.SEP
    m = make_masker("global_pmi", ranking=ranking, p=0.03, faithful=True)
    draws = m.draw(ids, torch.Generator().manual_seed(1))
    masked = m.positions_from_draws(ids, draws)
    counts = draws.centres.sum(1)
    by_count = {}
    for i, c in enumerate(counts.tolist()):
        by_count.setdefault(c, []).append(i)
    assert max(len(v) for v in by_count.values()) > 3
    for rows in by_count.values():
        assert all(torch.equal(masked[rows[0]], masked[j]) for j in rows)
    order = sorted(by_count)
    for a, b in zip(order, order[1:]):
        assert not (masked[by_count[a][0]] & ~masked[by_count[b][0]]).any()
    # the rank-by-id default depends on the DNA
    fair = make_masker("global_pmi", ranking=ranking, p=0.03).positions_from_draws(ids, draws)
    rows = max(by_count.values(), key=len)
    assert not all(torch.equal(fair[rows[0]], fair[j]) for j in rows)


def test_faithful_rank_table(ranking):
    """The release's `kmer_id_to_pmi_rank`: 4096 for the special ids, for missing k-mers and for rank 0."""
    rk = ranking.copy()
    rk[7], rk[9] = 4**6 + 1, 0  # a k-mer missing from the table, a k-mer with rank 0
    t, f = rank_table(rk, 6), masking.faithful_rank_table(rk, 6)
    assert t[:5].tolist() == [4097] * 5 and f[:5].tolist() == [4096] * 5
    assert (t[12], t[14], f[12], f[14]) == (4097, 0, 4096, 4096)
    keep = torch.ones(4101, dtype=torch.bool)
    keep[[0, 1, 2, 3, 4, 12, 14]] = False
    assert torch.equal(t[keep], f[keep])
    pos = masking.position_ranks(masking.faithful_rank_table(rk, 6), 600, 4096)
    assert pos.shape == (600,) and torch.equal(pos, f[:600])
    small = masking.position_ranks(masking.faithful_rank_table(rankings(3, 0, False), 3), 100, 64)
    assert small[69:].tolist() == [64] * 31  # positions beyond the 3-mer vocabulary (69 ids)


def test_faithful_cm_gems_high_centres_unsorted(ranking):
    """cm_gems's released genemask branch keeps the first ceil(m/2) centres by position (all when m <= 8),
    not the best half: with centres 20 tokens apart each high centre adds positions outside the DNABERT
    spans only in its own neighbourhood."""
    L = 260
    ids = torch.randint(5, 4101, (2, L), generator=torch.Generator().manual_seed(3))
    ids[:, 0], ids[:, -1] = kmers.CLS, kmers.SEP
    cols8, cols9 = [20 * (j + 1) for j in range(8)], [20 * (j + 1) for j in range(9)]
    rows = torch.tensor([0] * 8 + [1] * 9)
    cols = torch.tensor(cols8 + cols9)
    draws = Draws(None, rows=rows, cols=cols, shape=(2, L), branch="genemask")
    dn = make_masker("dnabert").positions_from_draws(ids, Draws(None, rows=rows, cols=cols, shape=(2, L)))

    def widened(masker, row, cs):
        extra = masker.positions_from_draws(ids, draws) & ~dn
        return [bool(extra[row, c - 8 : c + 9].any()) for c in cs]

    faithful = make_masker("cm_gems", ranking=ranking, faithful=True)
    assert widened(faithful, 0, cols8) == [True] * 8           # m = 8: every centre (fewer than 5 would be kept)
    assert widened(faithful, 1, cols9) == [True] * 5 + [False] * 4  # m = 9: the first ceil(9/2) = 5
    ours = make_masker("cm_gems", ranking=ranking)
    w = widened(ours, 1, cols9)
    assert sum(w) == 5 and w != [True] * 5 + [False] * 4  # the best 5 by NPMI rank are elsewhere


def test_faithful_cm_gems_ties_go_to_the_centre():
    """The release starts each span's minimum at the centre: with every k-mer ranked alike, every high
    centre widens around itself (ours: around the leftmost token of its span)."""
    L = 200
    ids = torch.randint(5, 4101, (3, L), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = kmers.CLS, kmers.SEP
    flat = np.full(4096, 7)
    for faithful, shift in ((True, 0), (False, -2)):
        m = make_masker("cm_gems", ranking=flat, faithful=faithful, p=0.02)
        draws = m.draw(ids, torch.Generator().manual_seed(1))
        masked = m.positions_from_draws(ids, draws)
        expect = torch.zeros_like(masked)
        for i in range(3):
            cs = torch.nonzero(draws.centres[i]).flatten().tolist()
            n_high = len(cs) if len(cs) <= 8 else math.ceil(len(cs) / 2)
            for j, c in enumerate(cs):
                expect[i, max(1, c - 2) : min(L - 2, c + 3) + 1] = True
                if j < n_high:  # ties: the first centres by position in both (equal ranks, then column)
                    q = max(1, c + shift) if not faithful else c
                    expect[i, max(1, q - 5) : min(L - 2, q + 5) + 1] = True
        assert draws.centres.sum() > 6 and torch.equal(masked, expect), faithful


def test_cm_step_schedule(ranking):
    share = masking.cm_step_share
    # T = 10000: blocks of 100 steps, 0 -> 1 by 1 %
    assert [share(t, 10000) for t in (0, 99, 100, 5000, 9999, 10000)] == [0.0, 0.0, 0.01, 0.5, 0.99, 1.0]
    assert [share(t, 150) for t in (0, 1, 99, 100, 149)] == [0.0, 0.01, 0.99, 1.0, 1.0]  # capped at 1
    assert [share(t, 40) for t in (0, 1, 20, 39, 40)] == [0.0, 0.02, 0.5, 0.97, 1.0]     # T < 100 guard
    assert share(5, 0) == 1.0 and share(-3, 1000) == 0.0
    # one coin per call, from the caller's generator: global_pmi for the whole batch with probability s
    m = make_masker("cm_step", ranking=ranking)
    ids = torch.randint(5, 4101, (2, 40), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = kmers.CLS, kmers.SEP
    g = torch.Generator().manual_seed(1)
    for t, lo, hi in ((0, 0, 0), (300, 0.27, 0.33), (700, 0.67, 0.73), (1000, 1, 1)):
        hits = sum(m.draw(ids, g, step=t, total_steps=1000).branch == "global_pmi" for _ in range(2000))
        assert lo <= hits / 2000 <= hi, (t, hits)  # binomial sd ~ 0.01
    a = [m.draw(ids, torch.Generator().manual_seed(s), step=500, total_steps=1000).branch for s in range(50)]
    b = [m.draw(ids, torch.Generator().manual_seed(s), step=500, total_steps=1000).branch for s in range(50)]
    assert a == b and 10 < a.count("global_pmi") < 40


def test_cm_step_branches_are_dnabert_and_global_pmi(real_ids, ranking):
    """After its coin, cm_step's draws and masks are exactly dnabert's (s = 0) or global_pmi's (s = 1)."""
    ids = real_ids[:64]
    cm = make_masker("cm_step", ranking=ranking)
    for t, other in ((0, "dnabert"), (1000, "global_pmi")):
        g = torch.Generator().manual_seed(4)
        got = cm.mask_positions(ids, g, step=t, total_steps=1000)
        g2 = torch.Generator().manual_seed(4)
        torch.rand(1, generator=g2)  # the coin
        want = make_masker(other, ranking=ranking).mask_positions(ids, g2)
        assert torch.equal(got, want)


PLATEAU = [4100.0, 1800.0, 420.0, 96.0, 61.0, 52.0, 51.4, 44.5, 44.1]  # |diff|: 2300 1380 324 35 9 0.6 6.9 0.4


def test_cm_gems_switches_on_plateau(real_ids, ranking):
    ids = real_ids[:48]
    m = make_masker("cm_gems", ranking=ranking)
    steps = [500 * (i + 1) for i in range(len(PLATEAU))]
    switched = [m.observe_validation(s, v) for s, v in zip(steps, PLATEAU)]
    assert m.switch_step == 3500 and switched == [False] * 6 + [True, False, False]
    gm, gp = make_masker("genemask", ranking=ranking), make_masker("global_pmi", ranking=ranking)
    for t, same_as in ((0, gm), (3499, gm), (3500, gp), (9000, gp)):
        got = m(ids, torch.Generator().manual_seed(t), step=t, total_steps=10000)
        want = same_as(ids, torch.Generator().manual_seed(t), step=t, total_steps=10000)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), t
    # the threshold moves the switch; NaN never counts; no plateau -> never
    for thr, at in ((10.0, 3000), (0.5, 4500), (0.01, None)):
        mm = make_masker("cm_gems", ranking=ranking, threshold=thr)
        for s, v in zip(steps, PLATEAU):
            mm.observe_validation(s, v)
        assert mm.switch_step == at, thr
    nan = make_masker("cm_gems", ranking=ranking)
    for s, v in ((1, float("nan")), (2, float("nan")), (3, 50.0), (4, float("nan")), (5, 80.0)):
        nan.observe_validation(s, v)
    assert nan.switch_step is None
    # switch_at fixes it; other schemes ignore the signal
    fixed = make_masker("cm_gems", ranking=ranking, switch_at=100)
    assert not fixed.observe_validation(50, 3.0) and not fixed.observe_validation(60, 3.0) and fixed.switch_step == 100
    g = make_masker("genemask", ranking=ranking)
    assert not g.observe_validation(1, 5.0) and not g.observe_validation(2, 5.0) and g.switch_step is None


def test_cm_gems_state_survives_a_checkpoint(ranking):
    """Restored mid-way (what pretrain does on resume), the plateau rule switches at the same step."""
    steps = [500 * (i + 1) for i in range(len(PLATEAU))]
    for cut in range(len(PLATEAU) + 1):
        a = make_masker("cm_gems", ranking=ranking)
        for s, v in zip(steps[:cut], PLATEAU[:cut]):
            a.observe_validation(s, v)
        blob = torch.load(_roundtrip(a.state_dict()), weights_only=False)
        b = make_masker("cm_gems", ranking=ranking)
        b.load_state_dict(blob)
        for s, v in zip(steps[cut:], PLATEAU[cut:]):
            b.observe_validation(s, v)
        assert b.switch_step == 3500, cut
    fresh = make_masker("cm_gems", ranking=ranking)
    fresh.load_state_dict(None)  # a checkpoint without masker state
    assert fresh.switch_step is None


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


# cm_step at s = 1 (step 10 of 10), cm_gems after a fixed switch, the faithful variants; same batch and seed
# as PINNED_DIGESTS. cm_gems after the switch is global_pmi draw for draw.
PINNED_VARIANTS = [
    ("global_pmi", {"faithful": True}, 3, "b91af948611ef1a3"),
    ("cm_step", {}, 10, "0238be69ccec25a4"),
    ("cm_step", {"faithful": True}, 10, "7072d232232c7556"),
    ("cm_gems", {"switch_at": 3}, 3, "2a5510c2aeb36148"),
    ("cm_gems", {"faithful": True}, 3, "1f273d5e61aa1c15"),
    ("cm_gems", {"faithful": True, "switch_at": 3}, 3, "b91af948611ef1a3"),
]


@pytest.mark.parametrize("scheme,options,step,digest", PINNED_VARIANTS)
def test_curriculum_variants_pinned(real_ids, ranking, scheme, options, step, digest):
    import hashlib

    m = make_masker(scheme, ranking=ranking, **options)
    out, lab = m(real_ids[:32], torch.Generator().manual_seed(5), step=step, total_steps=10)
    assert hashlib.sha256(out.numpy().tobytes() + lab.numpy().tobytes()).hexdigest()[:16] == digest


@pytest.mark.subprocess
def test_pretrain_records_cm_gems_switch_through_a_kill(hg38_slice, data_a, tmp_path, capfd):
    """pretrain reports each validation perplexity to the masker; cm_gems's switch step lands in
    genemask.json and the plateau rule's state survives SIGKILL + resume: threshold 1e9 switches at the
    second evaluation (step 8), which after a kill at the step-4 checkpoint needs the restored step-4
    perplexity; the resumed weights equal an uninterrupted run's. (A pretrain test, kept here with the
    masking scheme it checks.)"""
    import json
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from genemask.corpus import build_corpus

    build_corpus(hg38_slice, tmp_path / "c0", region="chr2:1-300000", seed=1)
    tiny = {"k": 6, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 512}
    (tmp_path / "tiny.json").write_text(json.dumps(tiny))

    def cmd(out):
        sets = ["steps=16", "batch_size=4", "grad_accum=2", "warmup_steps=3", "log_every=1", "eval_every=4",
                "eval_batches=2", "checkpoint_every=4", "threads=1", "masking={threshold: 1000000000}"]
        return [sys.executable, "-m", "genemask.cli", "pretrain", "--corpus", str(tmp_path / "c0"), "--model-config",
                str(tmp_path / "tiny.json"), "--scheme", "cm_gems", "--ranking", str(data_a), "-o", str(out),
                *[x for s in sets for x in ("--set", s)]]

    from genemask.cli import main

    ref = tmp_path / "ref"  # the uninterrupted run, in this process (threads=1 sets torch's count: restored)
    threads, _ = torch.get_num_threads(), capfd.readouterr()
    try:
        assert main(cmd(ref)[3:]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "masking switches to global_pmi at step 8" in capfd.readouterr().err
    assert json.loads((ref / "genemask.json").read_text())["switch_step"] == 8

    out = tmp_path / "killed"

    def step4():  # the run's checkpoints: killed.ckpt/<fingerprint>/step<N>.pt (+ .sha256 once complete)
        return [p.with_suffix("") for p in (tmp_path / "killed.ckpt").glob("*/step4.pt.sha256")]

    proc = subprocess.Popen(cmd(out), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not step4() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (ckpt,) = step4()
    state = torch.load(ckpt, weights_only=False)["state"]
    assert state["masker"]["last_perplexity"] is not None  # saved with the checkpoint
    threads = torch.get_num_threads()
    try:
        assert main(cmd(out)[3:]) == 0  # the rerun resumes from the step-4 checkpoint (in this process)
    finally:
        torch.set_num_threads(threads)
    assert json.loads((out / "genemask.json").read_text())["switch_step"] == 8
    a, b = load_file(ref / "step16" / "model.safetensors"), load_file(out / "step16" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
