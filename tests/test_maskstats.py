"""`genemask mask-stats` (maskstats.py) on real hg38 sequence: statistics, the default ranking, options,
the curriculum schemes' schedules and branches, errors."""
from __future__ import annotations

import pytest

from genemask import maskstats
from genemask.util import GeneMaskError


def _stats(capsys, *args, **kw):
    assert maskstats.mask_stats_cli(*args, **kw) == 0
    return dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())


def test_mask_stats_cli(hg38_slice, data_a, mirror, capsys, monkeypatch):
    dn = _stats(capsys, hg38_slice, "dnabert", ranking=str(data_a), n_seqs=300)
    monkeypatch.setenv("GENEMASK_MIRROR", str(mirror))
    gm = _stats(capsys, hg38_slice, "genemask", n_seqs=300)  # default ranking via $GENEMASK_MIRROR
    assert gm["n_seqs"] == dn["n_seqs"] == "300" and gm["n_tokens"] == str(300 * 506)
    assert float(gm["mean_rank_masked"]) < float(dn["mean_rank_masked"])
    assert gm["mean_rank_all"] == dn["mean_rank_all"]
    assert 0.13 < float(dn["masked_fraction"]) < 0.15 and 0.14 < float(gm["masked_fraction"]) < 0.17
    assert float(gm["mean_span"]) > float(dn["mean_span"]) > 5.5
    monkeypatch.delenv("GENEMASK_MIRROR")
    with pytest.raises(GeneMaskError, match="--ranking"):
        maskstats.mask_stats_cli(hg38_slice, "genemask", n_seqs=10)
    with pytest.raises(GeneMaskError, match="scheme"):
        maskstats.mask_stats_cli(hg38_slice, "nope", ranking=str(data_a), n_seqs=10)


def test_mask_stats_via_cli(hg38_slice, data_a, capsys):
    from genemask.cli import main

    assert main(["mask-stats", str(hg38_slice), "--scheme", "random", "--ranking", str(data_a),
                 "--n-seqs", "20"]) == 0
    assert "masked_fraction=" in capsys.readouterr().out
    assert main(["mask-stats", str(hg38_slice), "--scheme", "genemask", "--ranking", "/nonexistent.csv"]) == 2
    # options reach the masker: the figure's "half" rule masks less than the default on the same pieces
    base = ["mask-stats", str(hg38_slice), "--ranking", str(data_a), "--n-seqs", "300", "--scheme", "genemask"]
    assert main(base) == 0
    dflt = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert main(base + ["--option", "high_rule=half"]) == 0
    half = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert half["option.high_rule"] == "half" and "option.high_rule" not in dflt
    assert float(half["masked_fraction"]) < float(dflt["masked_fraction"]) - 0.005
    assert main(base + ["--option", "high_rule"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    # curriculum: s(t) printed; s = 0 picks high centres at random, so worse ranks than s = 1
    cur = base[:-1] + ["curriculum", "--total-steps", "10"]
    assert main(cur + ["--step", "0"]) == 0
    s0 = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert main(cur + ["--step", "10"]) == 0
    s1 = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert (s0["curriculum_share"], s1["curriculum_share"]) == ("0.0", "1.0")
    assert float(s1["mean_rank_masked"]) < float(s0["mean_rank_masked"])


def test_mask_stats_curriculum_schemes(hg38_slice, data_a, capsys):
    base = dict(ranking=str(data_a), n_seqs=300, batch_size=50)
    s0 = _stats(capsys, hg38_slice, "cm_step", step=0, total_steps=1000, **base)
    s1 = _stats(capsys, hg38_slice, "cm_step", step=1000, total_steps=1000, **base)
    assert (s0["cm_step_share"], s1["cm_step_share"]) == ("0.0", "1.0")
    assert (s0["batches"], s0["global_pmi_batches"], s1["global_pmi_batches"]) == ("6", "0", "6")
    assert float(s1["mean_rank_masked"]) < float(s0["mean_rank_masked"]) - 250
    gp = _stats(capsys, hg38_slice, "global_pmi", **base)
    gm = _stats(capsys, hg38_slice, "genemask", **base)
    pre = _stats(capsys, hg38_slice, "cm_gems", **base)  # no validation signal: the pre-switch branch
    post = _stats(capsys, hg38_slice, "cm_gems", options=["switch_at=0"], **base)
    keys = ("masked_fraction", "mean_span", "mean_rank_masked", "top_decile_masked")
    assert [pre[x] for x in keys] == [gm[x] for x in keys] and pre["global_pmi_batches"] == "0"
    assert [post[x] for x in keys] == [gp[x] for x in keys] and post["global_pmi_batches"] == "6"
    ff = _stats(capsys, hg38_slice, "global_pmi", options=["faithful=true"], **base)
    assert ff["option.faithful"] == "True" and float(ff["mean_rank_masked"]) > float(gp["mean_rank_masked"]) + 250
