"""precision: the bf16 decision from the setting, the device and the CPU's flags."""
from __future__ import annotations

import pytest

from genemask import precision
from genemask.util import GeneMaskError


def _cpuinfo(tmp_path, flags):
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\nflags\t: fpu\n")
    return str(p)


@pytest.mark.parametrize("flags, found", [("avx512f amx_bf16 amx_tile", ("amx_bf16",)),
                                          ("avx512_bf16 avx512f", ("avx512_bf16",)),
                                          ("avx512f avx2", ()), ("amx_tile", ())])
def test_cpu_flags_from_the_first_flags_line(tmp_path, flags, found):
    assert precision.cpu_bf16_flags(_cpuinfo(tmp_path, flags)) == found


def test_no_cpuinfo_means_no_bf16_units(tmp_path):
    assert precision.cpu_bf16_flags(str(tmp_path / "absent")) == ()


@pytest.mark.parametrize("value, parsed", [("auto", "auto"), (True, True), (False, False), ("true", True),
                                           ("False", False), (" AUTO ", "auto")])
def test_parse_setting(value, parsed):
    assert precision.parse_setting(value) == parsed


def test_a_bad_setting_is_one_line():
    with pytest.raises(GeneMaskError, match=r"--bf16: expected auto, true or false, got 'yes'"):
        precision.parse_setting("yes", "--bf16")


def test_explicit_settings_win_and_auto_follows_this_cpu():
    assert precision.use_bf16(True, "cpu") and not precision.use_bf16(False, "cpu")
    assert precision.use_bf16("auto", "cpu") == bool(precision.cpu_bf16_flags())


def test_autocast_context_runs_matmuls_in_bf16():
    import torch

    a = torch.randn(8, 8)
    with precision.autocast(torch.device("cpu"), True):
        assert (a @ a).dtype == torch.bfloat16
    with precision.autocast(torch.device("cpu"), False):
        assert (a @ a).dtype == torch.float32
