"""Save and load PAS adapters: a folder with ``adapter_config.json`` + ``adapter.safetensors``.

``adapter.safetensors`` holds (float32 unless noted):

- ``directions`` ``(K, head_dim)``, ``sigmas`` ``(K,)``, ``head_index`` ``(K, 2)`` int64
  ``(layer, head)``, ``val_accuracy`` ``(K,)``;
- ``u`` ``(n_layers, hidden)``: the per-layer vectors added to the o_proj output at the
  chosen alpha; ``u_unit``: the same at ``alpha = 1`` (``u = alpha * u_unit``), so another
  alpha needs no model (:meth:`PASAdapter.u_at`).

No pickles anywhere.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from palign import __version__
from palign.errors import PalignError
from palign.paths import atomic_write
from palign.steering.arch import ArchSpec, resolve_arch
from palign.steering.pas import (
    HEAD_RANKS,
    PROBE_SPLITS,
    PASFit,
    PASResult,
    WoSource,
    layer_vectors,
    unit_layer_vectors,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "ALPHA_SELECTIONS",
    "FORMAT_VERSION",
    "PASAdapter",
    "WeightCheckSkipped",
    "load_adapter",
    "save_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
FORMAT_VERSION = 1
ALPHA_SELECTIONS = ("heldout-kfold", "tuned", "fixed", "oracle")
_KIND = "palign-pas-adapter"


@dataclass
class PASAdapter:
    """A loaded PAS adapter.

    Attributes:
        config: the parsed ``adapter_config.json``.
        fit: heads, directions and sigmas.
        alpha: the alpha chosen at fit time.
        u: ``(n_layers, hidden)`` steering vectors at ``alpha``.
        u_unit: ``(n_layers, hidden)`` at ``alpha = 1``.
        path: the folder it was loaded from.
    """

    config: dict[str, Any]
    fit: PASFit
    alpha: float
    u: torch.Tensor
    u_unit: torch.Tensor
    path: Path | None = None
    validation_errors: dict[float, float] = field(default_factory=dict)

    @property
    def hidden(self) -> int:
        """Hidden size of the base model."""
        return int(self.u.shape[1])

    def u_at(self, alpha: float | None = None) -> torch.Tensor:
        """Steering vectors ``(n_layers, hidden)`` at ``alpha`` (``None`` = the fitted alpha).

        Uses ``u = alpha * u_unit`` (o_proj is linear), so no model is needed (the chat
        ``--alpha`` override).
        """
        if alpha is None:
            return self.u.clone()
        if not math.isfinite(float(alpha)):
            raise PalignError(f"alpha must be a finite number, got {alpha}")
        return float(alpha) * self.u_unit

    def recompute_u(self, alpha: float, w_o: WoSource) -> torch.Tensor:
        """Recompute ``u`` at ``alpha`` from the directions and a model's ``W_o``."""
        return layer_vectors(self.fit, alpha, w_o)


def save_adapter(
    path: str | os.PathLike[str],
    result: PASResult,
    *,
    model_id: str,
    model_type: str | None = None,
    arch: ArchSpec | None = None,
    revision: str | None = None,
    inventory: str,
    semantics: str,
    person: str = "answers-file",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a PAS adapter folder.

    Args:
        path: the folder (created; existing adapter files are replaced atomically).
        result: the fit (:func:`palign.steering.pas.fit_pas`).
        model_id: base model id for records and the load-time check.
        model_type: ``config.model_type`` of the base model (or give ``arch``).
        arch: the resolved base architecture (gives ``model_type``; sizes are checked).
        revision: base model revision, if known.
        inventory: inventory name (``"ipip-neo"``, ``"sd3"``).
        semantics: answer semantics (``"agreement"``/``"paper"``).
        person: person id, or ``"answers-file"`` for answers given by the user.
        extra: more JSON fields to record (under ``"extra"``).

    Returns:
        The folder path.
    """
    fit = result.fit
    if result.alpha_selection not in ALPHA_SELECTIONS:
        raise PalignError(
            f"unknown alpha_selection {result.alpha_selection!r}; use one of "
            f"{', '.join(ALPHA_SELECTIONS)}"
        )
    if arch is not None:
        model_type = model_type or arch.model_type
        sizes = (arch.n_layers, arch.n_heads, arch.head_dim, arch.hidden)
        if sizes != (fit.n_layers, fit.n_heads, fit.head_dim, int(result.u.shape[1])):
            raise PalignError(
                f"the fit's sizes {(fit.n_layers, fit.n_heads, fit.head_dim, result.u.shape[1])} "
                f"do not match the model's {sizes} (layers, heads, head_dim, hidden)"
            )
    if not model_type:
        raise PalignError("save_adapter needs the base model's model_type (or arch)")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    K = len(fit.heads)
    tensors = {
        "directions": fit.directions.detach().float().cpu().contiguous(),
        "sigmas": fit.sigmas.detach().float().cpu().contiguous(),
        "head_index": torch.tensor(fit.heads, dtype=torch.int64).reshape(K, 2),
        "val_accuracy": fit.val_accuracy.detach().float().cpu().contiguous(),
        "u": result.u.detach().float().cpu().contiguous(),
        "u_unit": result.u_unit.detach().float().cpu().contiguous(),
    }
    config: dict[str, Any] = {
        "kind": _KIND,
        "format_version": FORMAT_VERSION,
        "method": "pas",
        "base_model": {"id": model_id, "revision": revision, "model_type": model_type},
        "inventory": inventory,
        "semantics": semantics,
        "person": str(person),
        "n_layers": fit.n_layers,
        "n_heads": fit.n_heads,
        "head_dim": fit.head_dim,
        "hidden": int(result.u.shape[1]),
        "K": fit.K,
        "heads": [[int(a), int(b)] for a, b in fit.heads],
        "alpha": float(result.alpha),
        "alpha_selection": result.alpha_selection,
        "validation_errors": {
            format(a, "g"): float(e) for a, e in result.validation_errors.items()
        },
        "seed": fit.seed,
        "n_items": fit.n_items,
        "head_rank": fit.head_rank,
        "probe_split": fit.probe_split,
        "position": "last",
        "palign_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if extra:
        config["extra"] = dict(extra)
    from safetensors.torch import save_file

    atomic_write(
        folder / ADAPTER_WEIGHTS,
        lambda p: save_file(tensors, p, metadata={"format": "pt", "kind": _KIND}),
    )
    atomic_write(
        folder / ADAPTER_CONFIG,
        lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8"),
    )
    return folder


def _bad(folder: Path, why: str) -> PalignError:
    return PalignError(
        f"{folder} is not a usable palign PAS adapter: {why}; fit one again with "
        "'palign align ... --out DIR'"
    )


def _require(
    config: Mapping[str, Any], key: str, typ: type | tuple[type, ...], folder: Path
) -> Any:
    if key not in config:
        raise _bad(folder, f"{ADAPTER_CONFIG} has no {key!r}")
    value = config[key]
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise _bad(folder, f"{ADAPTER_CONFIG} field {key!r} has a wrong type")
    return value


def load_adapter(
    path: str | os.PathLike[str],
    model: Any = None,
    *,
    model_id: str | None = None,
    force: bool = False,
    arch: ArchSpec | None = None,
) -> PASAdapter:
    """Load a PAS adapter folder, optionally checking it against a base model.

    Args:
        path: the adapter folder.
        model: optional base model (an ``nn.Module``, or a ``LoadedModel`` with ``.model``
            and ``.model_id``): its ``model_type``, layers, heads, head_dim and hidden size
            must match (always an error otherwise).
        model_id: the base model's id (taken from a ``LoadedModel`` if not given); a
            different id/revision than recorded is an error unless ``force``.
        force: accept an id/revision mismatch.
        arch: the base model's resolved architecture (default: resolved from ``model``).

    Raises:
        PalignError: missing/corrupt files, unsupported format, or a mismatching model.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise PalignError(
            f"adapter folder {folder} does not exist; give the folder written by "
            "'palign align ... --out DIR'"
        )
    cfg_path, w_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise _bad(folder, f"{p.name} is missing")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(folder, f"{ADAPTER_CONFIG} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("kind") != _KIND:
        raise _bad(folder, f"{ADAPTER_CONFIG} is not a palign PAS adapter config")
    version = _require(config, "format_version", int, folder)
    if version > FORMAT_VERSION:
        raise PalignError(
            f"adapter {folder} has format_version {version}, this palign ({__version__}) reads "
            f"up to {FORMAT_VERSION}; upgrade palign"
        )
    n_layers = _require(config, "n_layers", int, folder)
    n_heads = _require(config, "n_heads", int, folder)
    head_dim = _require(config, "head_dim", int, folder)
    hidden = _require(config, "hidden", int, folder)
    alpha = float(_require(config, "alpha", (int, float), folder))
    base = _require(config, "base_model", dict, folder)
    heads_cfg = _require(config, "heads", list, folder)
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(w_path))
        except SafetensorError as e:
            raise _bad(folder, f"{ADAPTER_WEIGHTS} is corrupt ({e})") from None
    except (OSError, ValueError) as e:
        raise _bad(folder, f"{ADAPTER_WEIGHTS} cannot be read ({e})") from None
    K = len(heads_cfg)
    expected = {
        "directions": (K, head_dim),
        "sigmas": (K,),
        "head_index": (K, 2),
        "val_accuracy": (K,),
        "u": (n_layers, hidden),
        "u_unit": (n_layers, hidden),
    }
    for name, shape in expected.items():
        if name not in tensors:
            raise _bad(folder, f"{ADAPTER_WEIGHTS} has no tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise _bad(
                folder, f"tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape}"
            )
    heads = [(int(a), int(b)) for a, b in tensors["head_index"].tolist()]
    if heads != [tuple(h) for h in heads_cfg]:
        raise _bad(folder, "the heads in the config and the weights differ")
    if any(not (0 <= a < n_layers and 0 <= b < n_heads) for a, b in heads):
        raise _bad(folder, "a head index is out of range")
    u, u_unit = tensors["u"].float(), tensors["u_unit"].float()
    if not (torch.isfinite(u).all() and torch.isfinite(u_unit).all()):
        raise _bad(folder, "steering vectors contain NaN/inf")
    if not torch.allclose(u, alpha * u_unit, rtol=1e-4, atol=1e-6):
        raise _bad(folder, "u differs from alpha * u_unit")

    head_rank = config.get("head_rank", "val")
    if head_rank not in HEAD_RANKS:
        raise _bad(folder, f"unknown head_rank {head_rank!r} (expected one of {HEAD_RANKS})")
    # adapters written before the probe split was recorded split over items
    probe_split = config.get("probe_split", "items")
    if probe_split not in PROBE_SPLITS:
        raise _bad(folder, f"unknown probe_split {probe_split!r} (expected one of {PROBE_SPLITS})")
    fit = PASFit(
        heads=heads,
        directions=tensors["directions"].float(),
        sigmas=tensors["sigmas"].float(),
        val_accuracy=tensors["val_accuracy"].float(),
        K=int(config.get("K", K)),
        seed=int(config.get("seed", 0)),
        n_layers=n_layers,
        n_heads=n_heads,
        head_dim=head_dim,
        n_items=int(config.get("n_items", 0)),
        # adapters written before head_rank was recorded were ranked by validation accuracy
        head_rank=str(head_rank),
        probe_split=str(probe_split),
    )
    errors_cfg = config.get("validation_errors") or {}
    try:
        errors = {float(k): float(v) for k, v in dict(errors_cfg).items()}
    except (TypeError, ValueError):
        raise _bad(folder, "validation_errors is malformed") from None
    adapter = PASAdapter(
        config=config,
        fit=fit,
        alpha=alpha,
        u=u,
        u_unit=u_unit,
        path=folder,
        validation_errors=errors,
    )

    if model is not None or arch is not None:
        module = getattr(model, "model", model)
        if model_id is None:
            model_id = getattr(model, "model_id", None)
        revision = getattr(model, "revision", None)
        if arch is None:
            if not isinstance(module, nn.Module):
                raise PalignError("load_adapter(model=...) needs a torch model or a LoadedModel")
            arch = resolve_arch(module)
        _check_base(adapter, arch, base, model_id, revision, force, folder)
        _check_weights(adapter, arch)
    return adapter


def _check_base(
    adapter: PASAdapter,
    arch: ArchSpec,
    base: Mapping[str, Any],
    model_id: str | None,
    revision: str | None,
    force: bool,
    folder: Path,
) -> None:
    fit = adapter.fit
    want_type = base.get("model_type")
    got = (arch.model_type, arch.n_layers, arch.n_heads, arch.head_dim, arch.hidden)
    want = (want_type, fit.n_layers, fit.n_heads, fit.head_dim, adapter.hidden)
    if got != want:
        raise PalignError(
            f"adapter {folder} was fitted for {base.get('id')} ({want_type}: {fit.n_layers} "
            f"layers x {fit.n_heads} heads x {fit.head_dim}, hidden {adapter.hidden}) but the "
            f"model is {arch.model_type} ({arch.n_layers} x {arch.n_heads} x {arch.head_dim}, "
            f"hidden {arch.hidden}); load the model it was fitted for"
        )
    want_id, want_rev = base.get("id"), base.get("revision")
    id_differs = bool(model_id and want_id and model_id != want_id)
    rev_differs = bool(revision and want_rev and revision != want_rev)
    if id_differs or rev_differs:
        msg = (
            f"adapter {folder} was fitted for {want_id}"
            f"{'@' + want_rev if want_rev else ''} but the model is {model_id}"
            f"{'@' + revision if revision else ''}"
        )
        if not force:
            raise PalignError(f"{msg}; load that model, or pass --force to use it anyway")
        warnings.warn(f"{msg} (forced)", stacklevel=3)


class WeightCheckSkipped(UserWarning):
    """The adapter could not be compared with the model's ``o_proj`` weights."""


def _check_weights(adapter: PASAdapter, arch: ArchSpec) -> None:
    """Warn when u_unit does not match this model's W_o (other weights than at fit time).

    Weights that cannot be read as a dense ``W_o`` raise :class:`PalignError` (unsupported
    quantisation, see :meth:`ArchSpec.w_o`); weights that can be read but not multiplied here
    (e.g. offloaded to the ``meta`` device) skip the check with a
    :class:`WeightCheckSkipped` warning naming the reason: the stored vectors are then used
    unchecked.
    """
    try:
        ref = unit_layer_vectors(adapter.fit, arch)
    except PalignError:
        raise
    except Exception as err:
        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        warnings.warn(
            f"could not compare the adapter's steering vectors with this model's o_proj "
            f"weights ({type(err).__name__}: {msg}); the stored vectors are used unchecked, "
            "so an adapter fitted on other weights would go unnoticed",
            WeightCheckSkipped,
            stacklevel=3,
        )
        return
    num = float((ref - adapter.u_unit).norm())
    den = float(adapter.u_unit.norm())
    if den > 0 and num / den > 0.05:
        warnings.warn(
            f"the adapter's steering vectors differ by {num / den:.1%} from those computed "
            "with this model's o_proj weights: it was probably fitted on other weights",
            stacklevel=3,
        )
