"""PEFT LoRA adapters served per batch row (the training baselines' adapters, e.g. DPO).

A LoRA adapter adds ``scaling * B @ A @ x`` to the output of each target ``nn.Linear``. The
server keeps the base model untouched and applies, for each forward, one forward hook per
target module that adds the LoRA term to the rows whose sequence uses that adapter (other
rows are left exactly as they are). So LoRA personalities share batches with PAS
personalities and the base model, each row with its own adapter.

Read from a standard PEFT folder (``adapter_config.json`` with ``"peft_type": "LORA"`` +
``adapter_model.safetensors``). Supported: plain LoRA on ``nn.Linear`` modules, ``lora_alpha``
/ ``r`` scaling or rsLoRA, per-module ``rank_pattern`` / ``alpha_pattern``. Refused with a
message: DoRA, LoRA biases, ``fan_in_fan_out``, ``modules_to_save``, embedding/conv LoRA.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from palign.errors import PalignError

__all__ = ["LORA_CONFIG", "LORA_WEIGHTS", "LoraAdapter", "load_lora", "lora_rows"]

LORA_CONFIG = "adapter_config.json"
LORA_WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LoraAdapter:
    """A loaded LoRA adapter.

    Attributes:
        path: the folder.
        config: the parsed ``adapter_config.json``.
        layers: module name -> ``(A (r, in), B (out, r), scaling)`` on the model's device.
    """

    path: Path
    config: dict[str, Any]
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]

    @property
    def rank(self) -> int:
        """The default rank ``r``."""
        return int(self.config.get("r", 0))


def _bad(folder: Path, why: str) -> PalignError:
    return PalignError(f"{folder} is not a LoRA adapter palign can serve: {why}")


def _pattern(patterns: dict[str, Any], name: str, default: Any) -> Any:
    for key, value in (patterns or {}).items():
        if name == key or name.endswith("." + key) or re.fullmatch(key, name):
            return value
    return default


def load_lora(folder: str | Path, model: nn.Module) -> LoraAdapter:
    """Read a PEFT LoRA folder and check it against ``model`` (module names and shapes)."""
    folder = Path(folder)
    try:
        cfg = json.loads((folder / LORA_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(folder, f"{LORA_CONFIG} cannot be read ({e})") from None
    if not isinstance(cfg, dict) or str(cfg.get("peft_type", "")).upper() != "LORA":
        raise _bad(folder, f"peft_type is {cfg.get('peft_type')!r}, only LORA is supported")
    for key, bad in (
        ("use_dora", True),
        ("fan_in_fan_out", True),
    ):
        if cfg.get(key) == bad:
            raise _bad(folder, f"{key} is not supported")
    if cfg.get("bias", "none") != "none":
        raise _bad(folder, "LoRA biases are not supported (bias must be 'none')")
    if cfg.get("modules_to_save"):
        raise _bad(folder, "modules_to_save (fully trained modules) is not supported")
    wpath = folder / LORA_WEIGHTS
    if not wpath.is_file():
        raise _bad(folder, f"{LORA_WEIGHTS} is missing")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise _bad(folder, f"{LORA_WEIGHTS} is corrupt ({e})") from None
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise _bad(folder, f"unexpected tensor {key!r} (only lora_A/lora_B of Linear layers)")
        pairs.setdefault(m["mod"], {})[m["ab"]] = t
    modules = dict(model.named_modules())
    r0, alpha0 = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    rs = bool(cfg.get("use_rslora", False))
    p = next(model.parameters())
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise _bad(folder, f"{name} lacks lora_A or lora_B")
        mod = modules.get(name)
        if not isinstance(mod, nn.Linear):
            raise _bad(folder, f"the model has no Linear module {name!r}; fitted for another model")
        a, b = ab["A"], ab["B"]
        r = int(_pattern(cfg.get("rank_pattern") or {}, name, r0))
        alpha = float(_pattern(cfg.get("alpha_pattern") or {}, name, alpha0))
        if a.shape != (r, mod.in_features) or b.shape != (mod.out_features, r):
            raise _bad(
                folder,
                f"{name}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit the "
                f"model's {mod.in_features} -> {mod.out_features} with r={r}",
            )
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise _bad(folder, f"{name} has NaN/inf weights")
        scaling = alpha / math.sqrt(r) if rs else alpha / r
        layers[name] = (
            a.to(device=p.device, dtype=p.dtype),
            b.to(device=p.device, dtype=p.dtype),
            scaling,
        )
    if not layers:
        raise _bad(folder, "it holds no LoRA weights")
    return LoraAdapter(path=folder, config=cfg, layers=layers)


@contextmanager
def lora_rows(model: nn.Module, rows: Sequence[LoraAdapter | None]) -> Iterator[None]:
    """Inside the block, batch row ``b`` of every forward gets ``rows[b]``'s LoRA terms.

    Rows with ``None`` (and rows whose adapter does not touch a module) are left untouched.
    """
    groups: dict[int, tuple[LoraAdapter, list[int]]] = {}
    for b, ad in enumerate(rows):
        if ad is not None:
            groups.setdefault(id(ad), (ad, []))[1].append(b)
    if not groups:
        yield
        return
    dev = next(model.parameters()).device
    by_module: dict[str, list[tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]]] = {}
    for ad, idx in groups.values():
        index = torch.tensor(idx, device=dev)
        for name, (a, b, s) in ad.layers.items():
            by_module.setdefault(name, []).append((a, b, s, index))
    modules = dict(model.named_modules())
    n_rows = len(rows)

    def hook_for(terms: list[tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]]) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            x = args[0]
            if x.shape[0] != n_rows:
                raise PalignError(
                    f"LoRA rows were set for a batch of {n_rows} but the forward has "
                    f"{x.shape[0]} rows"
                )
            out = output.clone()
            for a, b, s, index in terms:
                xi = x.index_select(0, index).to(a.dtype)
                out.index_add_(0, index, ((xi @ a.t()) @ b.t() * s).to(out.dtype))
            return out

        return hook

    handles = [
        modules[name].register_forward_hook(hook_for(terms)) for name, terms in by_module.items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
