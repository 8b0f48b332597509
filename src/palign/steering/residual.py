"""Residual-stream directions: a per-layer contrastive direction (as CAA) and trait directions.

Two alternatives to PAS's per-head steering, studied in ``docs/results/method-study.md``:

* **Per-layer residual direction** (:func:`caa_direction`), as contrastive activation addition
  (CAA, Rimsky et al. 2024): the mean over the person's labelled shown items of the residual
  stream at the answer letter of the matching answer minus that of the other answer.
* **Trait directions** (:func:`trait_directions`, :func:`trait_weights`): one contrastive
  direction per Big Five trait, from the shown items of that trait oriented to the trait's high
  pole by the item's key (person-independent), weighted by the person's trait scores.

Where: the residual stream *after the attention block* of layer ``l`` (the input of the
block's MLP norm, e.g. ``post_attention_layernorm`` in Llama/Qwen2). That is exactly where a
steering vector added to ``o_proj``'s output enters the residual stream in Llama-like models, so
a residual direction ``v`` at layer ``l`` is steered with the ordinary PAS table
``u`` (``(n_layers, hidden)``, zero except row ``l`` = ``v``) through the same readout, hooks,
adapters and server. (Gemma 2/3 pass the attention output through a post-attention norm before
the residual: there the direction is captured at the MLP norm's input and added before that
norm, an approximation; see :data:`RESIDUAL_NORM`.)

The samples use the fixed PAS layout: sample ``2 i`` = item ``i`` answered "A" (Very
Accurate), ``2 i + 1`` = "E"; activations ``(2 * n_items, n_layers, hidden)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from palign.errors import PalignError
from palign.steering.arch import ArchSpec

__all__ = [
    "RESIDUAL_NORM",
    "ResidualDirection",
    "caa_direction",
    "residual_modules",
    "residual_table",
    "trait_directions",
    "trait_weights",
]

#: ``model_type`` -> name (inside a decoder layer) of the module whose *input* is the residual
#: stream after the attention block. Other model types fall back to the Llama name and fail
#: with a clear error if it is absent.
RESIDUAL_NORM: dict[str, str] = {
    "gemma2": "pre_feedforward_layernorm",
    "gemma3": "pre_feedforward_layernorm",
    "gemma3_text": "pre_feedforward_layernorm",
    "gpt2": "ln_2",
}
_DEFAULT_NORM = "post_attention_layernorm"


def residual_modules(model: torch.nn.Module, arch: ArchSpec) -> list[torch.nn.Module]:
    """The per-layer modules whose input is the residual stream after attention."""
    name = RESIDUAL_NORM.get(arch.model_type, _DEFAULT_NORM)
    suffix = arch.o_proj_path.split("{i}")
    if len(suffix) != 2:
        raise PalignError(f"cannot find decoder layers from the o_proj path {arch.o_proj_path!r}")
    mods = []
    for i in range(arch.n_layers):
        layer_path = suffix[0] + str(i)
        try:
            mods.append(model.get_submodule(f"{layer_path}.{name}"))
        except AttributeError:
            raise PalignError(
                f"{arch.model_type}: no {name!r} in {layer_path}; residual directions need a "
                "Llama-like decoder layer (post-attention norm); use PAS heads for this model"
            ) from None
    return mods


def _check(acts: torch.Tensor, n_items: int) -> None:
    if acts.ndim != 3 or acts.shape[0] != 2 * n_items:
        raise PalignError(
            f"residual activations must be (2 * {n_items}, layers, hidden), got {tuple(acts.shape)}"
        )


@dataclass
class ResidualDirection:
    """Unit directions per layer and the spread of the samples along them.

    Attributes:
        directions: ``(n_layers, hidden)`` unit vectors.
        sigmas: ``(n_layers,)`` std of the used samples' projections on each direction (the
            scale: a steering vector is ``alpha * sigma * direction``, as PAS per head).
        n_items: items that contributed.
    """

    directions: torch.Tensor
    sigmas: torch.Tensor
    n_items: int


def _oriented(acts: torch.Tensor, sign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``sign_i * (act_A_i - act_E_i)`` over items with ``sign != 0``, and the samples."""
    used = torch.nonzero(sign != 0).flatten()
    if used.numel() == 0:
        raise PalignError("no usable item (all neutral or missing); a direction needs answers")
    a = acts[2 * used].double()
    e = acts[2 * used + 1].double()
    s = sign[used].double().view(-1, 1, 1)
    diff = (s * (a - e)).mean(dim=0)  # (L, hidden)
    return diff, torch.cat([a, e], dim=0)


def _unit_and_sigma(diff: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norm = diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    unit = diff / norm
    proj = (samples * unit.unsqueeze(0)).sum(dim=-1)  # (n, L)
    return unit.float(), proj.std(dim=0, unbiased=False).float()


def caa_direction(acts: torch.Tensor, answers: Any) -> ResidualDirection:
    """The person's contrastive direction per layer (CAA): matching minus other answer.

    Args:
        acts: ``(2 * n_items, n_layers, hidden)`` residual activations (fixed layout).
        answers: ``(n_items,)`` the person's answers 1..5 (0/NaN = missing; 3 is skipped).
    """
    a = np.nan_to_num(np.asarray(answers, dtype=np.float64)).ravel()
    _check(acts, a.size)
    sign = torch.as_tensor(np.where(a > 3, 1.0, np.where((a > 0) & (a < 3), -1.0, 0.0)))
    diff, samples = _oriented(acts, sign)
    unit, sigma = _unit_and_sigma(diff, samples)
    return ResidualDirection(unit, sigma, int((sign != 0).sum()))


def trait_directions(
    acts: torch.Tensor, inventory: Any, item_ids: Sequence[str]
) -> dict[str, ResidualDirection]:
    """One person-independent direction per trait, toward the trait's high pole.

    For trait ``t``: the mean over the shown items of ``t`` of ``key * (act_A - act_E)``
    (``key`` +1 for a positively keyed item, -1 for a reversed one), per layer.
    """
    _check(acts, len(item_ids))
    out = {}
    for t in inventory.traits:
        sign = torch.tensor(
            [
                float(inventory.item(i).key) if inventory.item(i).trait == t else 0.0
                for i in item_ids
            ]
        )
        diff, samples = _oriented(acts, sign)
        unit, sigma = _unit_and_sigma(diff, samples)
        out[t] = ResidualDirection(unit, sigma, int((sign != 0).sum()))
    return out


def trait_weights(
    inventory: Any, item_ids: Sequence[str], answers: Any, semantics: str = "agreement"
) -> dict[str, float]:
    """The person's trait scores from their answers, mapped to ``[-1, 1]``: ``(score - 3) / 2``.

    Missing traits (no answered item) weigh 0.
    """
    a = np.nan_to_num(np.asarray(answers, dtype=np.float64)).ravel()
    acc: dict[str, list[float]] = {t: [] for t in inventory.traits}
    for iid, v in zip(item_ids, a):
        if v <= 0:
            continue
        it = inventory.item(iid)
        acc[it.trait].append(inventory.to_trait(it, float(v), semantics))
    return {t: (float(np.mean(v)) - 3.0) / 2.0 if v else 0.0 for t, v in acc.items()}


def residual_table(
    vectors: dict[int, torch.Tensor], n_layers: int, hidden: int, alphas: Sequence[float]
) -> torch.Tensor:
    """Steering tables ``(n_alpha, n_layers, hidden)``: row ``l`` = ``alpha * vectors[l]``.

    ``vectors`` maps layers to (already scaled) residual vectors; other layers stay zero.
    """
    u = torch.zeros(len(alphas), n_layers, hidden)
    for layer, v in vectors.items():
        if not 0 <= layer < n_layers:
            raise PalignError(f"layer {layer} outside 0..{n_layers - 1}")
        u[:, layer] = torch.tensor([float(a) for a in alphas]).view(-1, 1) * v.float().view(1, -1)
    return u
