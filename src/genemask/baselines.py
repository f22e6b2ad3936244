"""External models as baselines (config `baselines: {name: {model: FOLDER_OR_HUB_ID}}`).

`prepare_baseline` resolves the model (a local Hugging Face folder, or a hub id fetched with
`huggingface_hub.snapshot_download`: on a connected node it downloads, offline it reads the hub
cache, with HF_HUB_OFFLINE=1 it never touches the network), checks that it speaks our tokens,
and writes a copy as `results/baselines/<name>/` with a `genemask.json` naming its k and source,
so fine-tuning treats it like any of our model folders.

"Speaks our tokens": its vocab.txt must be exactly our vocabulary for its k (the five specials,
then the 4^k k-mers in DNABERT's order: ids must mean the same k-mers), and config.json's
vocab_size must cover it. k comes from its genemask.json, else from the length of the k-mer
tokens in vocab.txt. The published DNABERT-6 checkpoint passes this check (its vocab.txt is
DNABERT's, which our vocabulary reproduces exactly).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .modelfolder import META, WEIGHT_SUFFIXES, WEIGHTS, check_vocabulary, seal, verify_weights
from .util import BASELINE_MODEL, GeneMaskError, atomic_output


def resolve(spec: str, revision: str | None = None) -> Path:
    """A local folder as it is, else a hub id through huggingface_hub (cache first when offline)."""
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise GeneMaskError(f"{spec}: a baseline model must be a folder (Hugging Face save_pretrained)")
        return p
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise GeneMaskError(f"{spec}: no such model folder, and not a hub id of the form owner/name")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise GeneMaskError(f"{spec}: not a local folder, and huggingface_hub is not installed to fetch it") from None
    try:
        return Path(snapshot_download(spec, revision=revision))
    except Exception as e:  # noqa: BLE001 - network, auth, not found, not in the offline cache
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise GeneMaskError(f"{spec}: cannot fetch the hub model ({msg}); on an offline node, fill the "
                            f"Hugging Face cache on a connected one or give a local folder") from None


def prepare_baseline(name: str, spec: str, output: str | os.PathLike, revision: str | None = None) -> dict:
    """Resolve, check and copy a baseline model into `output` (with genemask.json); returns its meta.

    The copy holds one weights file, model.safetensors, with its sha256 in genemask.json (what
    `modelfolder.verify_weights` accepts): the source's model.safetensors, else its single
    pytorch_model.bin converted (read with torch.load(weights_only=True): tensors only, no code).
    The source's other weights files (tf_model.h5, flax_model.msgpack, ...) are not copied."""
    src = resolve(spec, revision)
    k = check_vocabulary(src)
    meta = {"baseline": name, "source": spec, "revision": revision, "resolved": str(src), "k": k}
    with atomic_output(output, is_dir=True, kind=BASELINE_MODEL) as tmp:
        for f in src.iterdir():
            if (f.is_file() and f.name != META and not f.name.startswith(".")
                    and not f.name.lower().endswith(WEIGHT_SUFFIXES)):
                shutil.copy2(f, tmp / f.name)
        if (src / WEIGHTS).is_file():
            shutil.copy2(src / WEIGHTS, tmp / WEIGHTS)
        elif (src / "pytorch_model.bin").is_file():
            _bin_to_safetensors(src / "pytorch_model.bin", tmp / WEIGHTS)
        else:
            raise GeneMaskError(f"{src}: no {WEIGHTS} or pytorch_model.bin (sharded or other formats are not read)")
        meta = seal(tmp, meta)
        verify_weights(tmp)
    return meta


def _bin_to_safetensors(src: Path, dst: Path) -> None:
    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling refused or a damaged file
        raise GeneMaskError(f"{src}: cannot read the weights as plain tensors ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GeneMaskError(f"{src}: not a state dict of tensors")
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(dst), metadata={"format": "pt"})
