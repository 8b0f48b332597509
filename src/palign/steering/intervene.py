"""Activation steering hooks on the attention output projection.

Two equivalent ways to apply a PAS shift (``o_proj`` is linear, so adding ``delta`` to the
head slices of its *input* adds ``u_l = W_o @ delta`` to its *output*):

- :func:`steer` / :class:`Steerer` add per-layer vectors ``u`` (``(B, n_layers, hidden)``)
  to the o_proj output with forward hooks. This is what the readout and chat use.
- :func:`steer_heads` adds per-head shifts ``delta`` (``(B, n_layers, n_heads, head_dim)``)
  to the o_proj input with forward pre-hooks, as ITI/honest_llama do; used to check the
  equivalence.

Position ``"last"`` (default) shifts the last position of *every* forward: the prompt
forward (left padding puts the readout position at ``-1``) and each decoding step when
generating with a KV cache, like ITI's generation-time intervention. ``"all"`` shifts every
position of every forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from palign.errors import PalignError
from palign.steering.arch import ArchSpec, resolve_arch

__all__ = ["Position", "Steerer", "steer", "steer_heads"]

Position = Literal["last", "all"]


def _check_position(position: str) -> Position:
    if position not in ("last", "all"):
        raise PalignError(f"unknown steering position {position!r}; use 'last' or 'all'")
    return position  # type: ignore[return-value]


class _Hooks:
    """Hooks adding ``vectors[b, l]`` (width ``width``) to o_proj output or input of layer l."""

    def __init__(self, model: nn.Module, arch: ArchSpec | None, position: str, pre: bool) -> None:
        self.model = model
        self.arch = arch if arch is not None else resolve_arch(model)
        self.position = _check_position(position)
        self.pre = pre
        self._vectors: torch.Tensor | None = None
        self._cast: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        self._handles: list[Any] = []

    # --- vectors ------------------------------------------------------------------------
    def _store(self, vectors: torch.Tensor | None) -> None:
        self._vectors = vectors
        self._cast = {}

    def _vec(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        key = (layer, like.device, like.dtype)
        v = self._cast.get(key)
        if v is None:
            assert self._vectors is not None
            v = self._vectors[:, layer].to(device=like.device, dtype=like.dtype)
            self._cast[key] = v
        return v

    def _shifted(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise PalignError(
                f"steering expects o_proj activations shaped (batch, seq, width), got "
                f"{tuple(x.shape)}; this model's attention layout is not supported"
            )
        v = self._vec(layer, x)
        b = x.shape[0]
        if v.shape[0] != b:
            if v.shape[0] != 1:
                raise PalignError(
                    f"steering has {v.shape[0]} rows but the forward has batch size {b}; "
                    "pass one steering row per batch row (or a single row for all)"
                )
            v = v.expand(b, -1)
        if self.position == "all":
            return x + v[:, None, :]
        out = x.clone()
        out[:, -1] += v
        return out

    # --- hooks ----------------------------------------------------------------------------
    def _register(self) -> None:
        if self._vectors is None:
            return
        active = (self._vectors != 0).flatten(2).any(dim=2).any(dim=0)  # (n_layers,)
        for layer in torch.nonzero(active).flatten().tolist():
            mod = self.arch.modules[layer]
            if self.pre:
                self._handles.append(mod.register_forward_pre_hook(self._pre_hook(layer)))
            else:
                self._handles.append(mod.register_forward_hook(self._post_hook(layer)))

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _post_hook(self, layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if isinstance(output, tuple):
                return (self._shifted(layer, output[0]), *output[1:])
            return self._shifted(layer, output)

        return hook

    def _pre_hook(self, layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
            if not args:
                raise PalignError("o_proj was called without a positional input; cannot steer")
            return (self._shifted(layer, args[0]), *args[1:])

        return hook


def _as_batched(x: torch.Tensor, ndim: int, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise PalignError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == ndim - 1:
        x = x.unsqueeze(0)
    if x.ndim != ndim:
        raise PalignError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise PalignError(f"{name} contains NaN or inf values; refit the steering adapter")
    return x.detach()


class Steerer:
    """Persistent steering of a model by per-layer vectors ``u`` on the o_proj output.

    For chat/serving: ``attach()`` registers the hooks, ``set(u)`` swaps the vectors (hooks
    follow), ``detach()`` removes every hook this object added. Also a context manager.

    Args:
        model: the model to steer.
        u: ``(B, n_layers, hidden)`` or ``(n_layers, hidden)`` (one row for any batch);
            ``None`` = no steering until :meth:`set`.
        position: ``"last"`` (last position of every forward) or ``"all"``.
        arch: resolved architecture (default: :func:`resolve_arch` of ``model``).
    """

    def __init__(
        self,
        model: nn.Module,
        u: torch.Tensor | None = None,
        position: Position = "last",
        arch: ArchSpec | None = None,
    ) -> None:
        self._hooks = _Hooks(model, arch, position, pre=False)
        self._attached = False
        if u is not None:
            self.set(u)

    @property
    def arch(self) -> ArchSpec:
        """The resolved architecture."""
        return self._hooks.arch

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return self._attached

    @property
    def u(self) -> torch.Tensor | None:
        """The current steering vectors, ``(B, n_layers, hidden)``."""
        return self._hooks._vectors

    def set(self, u: torch.Tensor | None) -> Steerer:
        """Replace the steering vectors (``None`` = none); re-hooks if attached."""
        if u is not None:
            u = _as_batched(u, 3, "u")
            arch = self._hooks.arch
            if tuple(u.shape[1:]) != (arch.n_layers, arch.hidden):
                raise PalignError(
                    f"u has shape {tuple(u.shape)} but this model needs "
                    f"(rows, {arch.n_layers}, {arch.hidden}) (n_layers, hidden); the adapter "
                    "was fitted for another model"
                )
        was = self._attached
        if was:
            self.detach()
        self._hooks._store(u)
        if was:
            self.attach()
        return self

    def attach(self) -> Steerer:
        """Register the hooks (no-op if attached)."""
        if not self._attached:
            self._hooks._register()
            self._attached = True
        return self

    def detach(self) -> None:
        """Remove every hook this steerer registered."""
        self._hooks._remove()
        self._attached = False

    def __enter__(self) -> Steerer:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()


@contextmanager
def steer(
    model: nn.Module,
    u: torch.Tensor | None,
    position: Position = "last",
    arch: ArchSpec | None = None,
) -> Iterator[Steerer]:
    """Add ``u[b, l]`` to the o_proj output of layer ``l``, batch row ``b``, inside the block.

    Args:
        model: the model.
        u: ``(B, n_layers, hidden)`` (or ``(n_layers, hidden)`` for every row); rows that are
            zero leave their batch row untouched, all-zero layers get no hook; ``None`` =
            no steering. Cast to the activations' dtype/device at use.
        position: ``"last"``: last position of every forward (prompt and each decoding
            step); ``"all"``: every position.
        arch: resolved architecture (default: :func:`resolve_arch`).

    Hooks are removed on exit, also on exceptions; the model is left as it was.
    A batch size other than ``B`` (or 1) raises :class:`PalignError` during the forward.
    """
    s = Steerer(model, u, position=position, arch=arch)
    s.attach()
    try:
        yield s
    finally:
        s.detach()


@contextmanager
def steer_heads(
    model: nn.Module,
    delta: torch.Tensor | None,
    position: Position = "last",
    arch: ArchSpec | None = None,
) -> Iterator[None]:
    """Add per-head shifts to the o_proj *input* inside the block (ITI style).

    Args:
        model: the model.
        delta: ``(B, n_layers, n_heads, head_dim)`` or ``(n_layers, n_heads, head_dim)``;
            ``delta[b, l, h]`` is added to head ``h``'s slice of layer ``l``'s o_proj input.
        position: as in :func:`steer`.
        arch: resolved architecture (default: :func:`resolve_arch`).

    Equivalent to :func:`steer` with ``u[b, l] = W_o[l] @ delta[b, l].flatten()``.
    """
    hooks = _Hooks(model, arch, position, pre=True)
    if delta is not None:
        delta = _as_batched(delta, 4, "delta")
        a = hooks.arch
        if tuple(delta.shape[1:]) != (a.n_layers, a.n_heads, a.head_dim):
            raise PalignError(
                f"delta has shape {tuple(delta.shape)} but this model needs "
                f"(rows, {a.n_layers}, {a.n_heads}, {a.head_dim}) "
                "(n_layers, n_heads, head_dim)"
            )
        hooks._store(delta.flatten(2))
    hooks._register()
    try:
        yield None
    finally:
        hooks._remove()
