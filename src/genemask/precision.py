"""bf16 where the hardware has it: the one place that decides, and the autocast context every
training and inference path uses.

The `bf16` setting (pretrain.settings.bf16, finetune.settings.bf16, predict.bf16, the commands'
--bf16) is `auto`, `true` or `false`:

* `auto` (the default): bf16 autocast on a CUDA device that supports bf16
  (`torch.cuda.is_bf16_supported()`), and on a CPU with bf16 matrix units: Intel AMX (`amx_bf16`)
  or AVX512-BF16 (`avx512_bf16`), read from the `flags` line of /proc/cpuinfo (Linux; on other
  systems the CPU is taken as without). On such CPUs oneDNN runs bf16 matrix products at 6-12x
  float32's rate; on CPUs without them bf16 is emulated and slower than float32, so auto stays in
  float32 there.
* `true`: bf16 autocast on any device (on a CPU without the units: slower, same numerics).
* `false`: float32 throughout.

Autocast keeps float32 master weights and optimiser state: the matrix products (linear layers,
attention) run in bf16, the reductions, softmax, layer norms and the loss in float32 (torch's
autocast op lists). Same seeds still give identical outputs on the same machine.
"""
from __future__ import annotations

import functools
from contextlib import nullcontext
from pathlib import Path

from .util import GeneMaskError

SETTINGS = ("auto", True, False)
CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # the /proc/cpuinfo flags of bf16 matrix units


@functools.cache
def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The bf16 flags (CPU_FLAGS) of this CPU, from the first `flags` line of `cpuinfo`; () when
    the file is absent or unreadable (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return tuple(f for f in CPU_FLAGS if f in flags)
    return ()


def parse_setting(value, what: str = "bf16"):
    """`auto`, True or False from a setting as written (bool, or the strings auto/true/false)."""
    if isinstance(value, bool) or value == "auto":
        return value
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[text]
    raise GeneMaskError(f"{what}: expected auto, true or false, got {value!r}")


def use_bf16(setting, device) -> bool:
    """Whether to autocast to bf16 on `device` (a torch.device or its type) under `setting`."""
    setting = parse_setting(setting)
    if setting != "auto":
        return setting
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return kind == "cpu" and bool(cpu_bf16_flags())


def autocast(device, enabled: bool):
    """A bf16 autocast context on `device` when `enabled`, else a null context."""
    if not enabled:
        return nullcontext()
    import torch

    return torch.autocast(getattr(device, "type", str(device)), dtype=torch.bfloat16)


def describe(setting, device) -> str:
    """One line for logs and model cards: what was used and why."""
    on = use_bf16(setting, device)
    kind = getattr(device, "type", str(device))
    why = (f"bf16={parse_setting(setting)}" if parse_setting(setting) != "auto" else
           f"auto: {kind}" + (f" with {', '.join(cpu_bf16_flags())}" if kind == "cpu" and cpu_bf16_flags() else
                              " without bf16 units" if kind == "cpu" else ""))
    return f"{'bf16 autocast' if on else 'float32'} ({why})"


def float32_head(model, name: str = "classifier"):
    """Run `model.<name>` (a classifier's output layer) outside autocast on float32 input, so the
    logits are float32 whatever the body ran in: a bf16 output layer rounds the logits to 8
    significant bits (about 0.004 at |z| ~ 1), which ties the probabilities of different records
    and zeroes small in-silico mutation effects. The head is one small matrix product, so this costs
    nothing measurable. In place and idempotent; the module tree and state dict are unchanged (an
    instance `forward`). Returns `model`; a model without such a head is returned as it is."""
    head = getattr(model, name, None)
    if head is None or "forward" in vars(head):
        return model
    import torch

    cls_forward = type(head).forward

    def forward(x, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            return cls_forward(head, x.float(), *args, **kwargs)

    head.forward = forward
    return model
