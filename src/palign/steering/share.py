"""Share the layers below the lowest steered layer between rows that differ only by steering.

Steering adds ``u_l`` after ``o_proj`` of layer ``l`` only; below the lowest layer with a
non-zero ``u`` every row with the same tokens (and the same cache below that layer) has the
same hidden states. :func:`share_below` runs a forward on the *distinct* rows only and, with
forward pre-hooks on the decoder layers from ``layer`` up, expands their batch-shaped inputs
(hidden states, attention mask, position ids, rotary position embeddings) to the full batch
by an index: layer ``layer`` receives the shared rows' hidden states, copied to every row
that needs them, and computes everything above per row as before. No model code is copied;
the model's own forward runs, entered with fewer rows.

A decoder layer whose ``forward`` takes inputs the hooks do not know (a name outside
:data:`KNOWN_LAYER_INPUTS`) gets no sharing: :func:`can_share` says so and the caller runs
the plain forward.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from palign.steering.arch import ArchSpec, _get

__all__ = [
    "KNOWN_LAYER_INPUTS",
    "can_share",
    "decoder_layers",
    "lowest_steered_layer",
    "share_below",
]

#: decoder-layer inputs the hooks handle: batch-shaped ones are expanded, the others
#: (caches, flags, 1-D cache positions) are passed on unchanged
EXPANDED = ("hidden_states", "attention_mask", "position_ids")
KNOWN_LAYER_INPUTS = frozenset(
    {
        *EXPANDED,
        "position_embeddings",
        "cache",
        "past_key_values",
        "past_key_value",
        "use_cache",
        "cache_position",
        "output_attentions",
        "kwargs",
    }
)


def decoder_layers(model: nn.Module, arch: ArchSpec) -> list[nn.Module] | None:
    """The decoder layers holding ``arch``'s projections (the template's path up to ``{i}``)."""
    template = arch.o_proj_path
    if "{i}" not in template:
        return None
    path = template[: template.index("{i}") + 3]
    layers = [_get(model, path.format(i=i)) for i in range(arch.n_layers)]
    return None if any(m is None for m in layers) else layers  # type: ignore[return-value]


def can_share(model: nn.Module, arch: ArchSpec) -> bool:
    """Whether :func:`share_below` knows every input of this model's decoder layers."""
    layers = decoder_layers(model, arch)
    if not layers:
        return False
    params = inspect.signature(layers[0].forward).parameters
    return "hidden_states" in params and set(params) <= KNOWN_LAYER_INPUTS


def lowest_steered_layer(u: torch.Tensor | None) -> int | None:
    """The lowest layer with a non-zero vector in ``u`` ``(rows, n_layers, hidden)``, or None."""
    if u is None:
        return None
    active = torch.nonzero((u != 0).flatten(2).any(dim=2).any(dim=0)).flatten()
    return int(active[0]) if active.numel() else None


def _expand(x: Any, index: torch.Tensor, n_src: int, memo: dict[int, Any]) -> Any:
    if isinstance(x, torch.Tensor):
        if x.ndim == 0 or x.shape[0] != n_src:
            return x
        hit = memo.get(id(x))
        if hit is None:
            hit = memo[id(x)] = (x, x.index_select(0, index.to(x.device)))
        return hit[1]
    if isinstance(x, (tuple, list)):
        return type(x)(_expand(y, index, n_src, memo) for y in x)
    return x


@contextmanager
def share_below(
    model: nn.Module, arch: ArchSpec, layer: int, index: torch.Tensor, n_src: int
) -> Iterator[None]:
    """Inside the block, a forward of ``n_src`` rows continues from decoder layer ``layer``
    with ``len(index)`` rows: row ``r`` above that point is source row ``index[r]``.

    The caller enters the forward with the distinct rows and, where it passes a cache, one
    whose layers below ``layer`` hold ``n_src`` rows and the others ``len(index)`` rows (so
    does the cache the forward returns). Steering vectors must be zero below ``layer``.
    """
    layers = decoder_layers(model, arch)
    if layers is None:
        raise ValueError("share_below needs the model's decoder layers (see can_share)")
    memo: dict[int, Any] = {}  # the mask and position tensors are expanded once per forward

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        args = tuple(_expand(a, index, n_src, memo) if k == 0 else a for k, a in enumerate(args))
        for name in list(kwargs):
            if name in EXPANDED or name.startswith("position_embeddings"):
                kwargs[name] = _expand(kwargs[name], index, n_src, memo)
        return args, kwargs

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in layers[layer:]]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        memo.clear()
