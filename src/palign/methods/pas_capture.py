"""The contrastive captures PAS and the residual-stream methods fit on: every shown statement
prompted with the assistant's answer prefilled to "A" and, separately, to "E" (the fixed sample
layout of :mod:`palign.steering.pas`), under the neutral system prompt, cached on disk."""

from __future__ import annotations

from typing import Any

import torch

from palign.data.types import Dataset
from palign.models.loading import LoadedModel
from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT, build_prompt, encode_prompt
from palign.steering.arch import ArchSpec
from palign.steering.residual import residual_modules

__all__ = [
    "cached_contrastive_capture",
    "contrastive_prompts",
    "residual_activations",
    "shown_activations",
]


def contrastive_prompts(lm: LoadedModel, dataset: Dataset, system_prompt: str | None) -> list[str]:
    """Prompts in the fixed PAS layout: item ``i`` -> samples ``2i`` ("A") and ``2i+1`` ("E")."""
    inv = dataset.inventory
    out = []
    for iid in inv.shown_ids:
        st = inv.statement(inv.item(iid))
        out += [
            build_prompt(lm.tokenizer, system_prompt, st, "A"),
            build_prompt(lm.tokenizer, system_prompt, st, "E"),
        ]
    return out


def shown_activations(
    lm: LoadedModel, dataset: Dataset, arch: Any, batch_size: int = 16, progress: bool = True
) -> torch.Tensor:
    """Contrastive head activations of the shown items, from the disk cache when present."""
    return cached_contrastive_capture(
        lm,
        dataset,
        arch,
        {"o_proj": [arch.n_layers, arch.n_heads, arch.head_dim]},
        batch_size=batch_size,
        progress=progress,
    )


def cached_contrastive_capture(
    lm: LoadedModel,
    dataset: Dataset,
    arch: Any,
    key_extra: dict[str, Any],
    batch_size: int = 16,
    progress: bool = True,
) -> torch.Tensor:
    """Capture ``arch.modules``' inputs on the contrastive prompts, cached on disk.

    The prompts are :func:`contrastive_prompts` under the neutral system prompt; the cache key
    is the model's :func:`~palign.steering.capture.model_key_fields`, the inventory, the shown
    items, the prompts' hash and ``key_extra`` (what is captured, e.g. ``{"o_proj": ...}``).
    Returns ``(2 * n_shown, n_layers, n_heads, head_dim)`` as ``capture_prompts``.
    """
    from palign.steering.capture import (
        cached_activations,
        capture_prompts,
        model_key_fields,
        text_sha256,
    )

    prompts = contrastive_prompts(lm, dataset, NEUTRAL_SYSTEM_PROMPT)
    key = {
        **model_key_fields(lm),  # id, revision, dtype, 4-bit, weights fingerprint
        "inventory": dataset.inventory.name,
        "items": dataset.inventory.shown_ids,
        "prompts_sha256": text_sha256("\x00".join(prompts)),
        **key_extra,
    }

    def compute() -> torch.Tensor:
        return capture_prompts(
            lm.model,
            lm.tokenizer,
            prompts,
            arch=arch,
            batch_size=batch_size,
            progress=progress,
            encode=lambda t: encode_prompt(lm.tokenizer, t),
        )

    return cached_activations(key, compute)


def residual_activations(
    lm: Any, dataset: Any, arch: ArchSpec, batch_size: int = 16, progress: bool = True
) -> torch.Tensor:
    """Residual stream after attention at the answer letter, for the PAS contrastive prompts.

    Same prompts as :func:`shown_activations` (neutral system prompt; each
    shown statement with the answer prefilled to "A" and to "E"), cached on disk.

    Returns:
        ``(2 * n_shown, n_layers, hidden)`` float32 on CPU.
    """
    mods = residual_modules(lm.model, arch)
    # the capture reads the first input of each module; a one-"head" spec of width hidden
    pseudo = ArchSpec(
        model_type=arch.model_type,
        o_proj_path=arch.o_proj_path,
        modules=mods,
        n_layers=arch.n_layers,
        n_heads=1,
        head_dim=arch.hidden,
        hidden=arch.hidden,
    )
    extra = {"residual_after_attention": [arch.n_layers, arch.hidden]}
    acts = cached_contrastive_capture(lm, dataset, pseudo, extra, batch_size, progress)
    return acts[:, :, 0, :]
