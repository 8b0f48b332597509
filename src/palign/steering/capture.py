"""Capture per-head activations at the o_proj input, and cache them on disk.

The activation of head ``h`` at layer ``l`` is head ``h``'s slice of the input of layer
``l``'s attention output projection, taken at one position per row (the answer letter, the
last token). :func:`capture_head_activations` returns them as ``(samples, layers, heads,
head_dim)`` float32 on CPU.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from palign.errors import PalignError
from palign.paths import atomic_write, cache_dir
from palign.steering.arch import ArchSpec, resolve_arch

__all__ = [
    "activations_cache_dir",
    "cache_key",
    "cached_activations",
    "capture_head_activations",
    "capture_prompts",
    "model_key_fields",
    "text_sha256",
]


class _StopForward(Exception):
    """Raised by the last layer's hook: the rest of the forward is not needed."""


def _model_device(model: nn.Module) -> torch.device:
    get_emb = getattr(model, "get_input_embeddings", None)
    if callable(get_emb):
        emb = get_emb()
        if emb is not None and getattr(emb, "weight", None) is not None:
            return emb.weight.device
    return next(model.parameters()).device


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic forwards
        return False


def capture_head_activations(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor] | torch.Tensor],
    arch: ArchSpec | None = None,
    positions: Iterable[torch.Tensor | Sequence[int] | None] | None = None,
    muted: list[bool] | None = None,
) -> torch.Tensor:
    """Run ``model`` on ``batches`` and collect the o_proj inputs, split into heads.

    Args:
        model: the model (eval mode is the caller's business; gradients are off here).
        batches: each a tensor of input ids ``(B, T)`` or a mapping of model inputs
            (``input_ids``, ``attention_mask``, ``position_ids``, ...), left-padded so that
            the position of interest is the last one.
        arch: resolved architecture (default: :func:`resolve_arch`).
        positions: optional, one entry per batch: per-row positions ``(B,)`` to read instead
            of the last one (``None`` entries = last).
        muted: optional flag the caller sets (``muted[0] = True``) while it runs forwards of
            its own between batches (e.g. filling a prompt cache) that must not be captured.

    Returns:
        ``(samples, n_layers, n_heads, head_dim)`` float32 on CPU, rows in batch order.
    """
    arch = arch if arch is not None else resolve_arch(model)
    device = _model_device(model)
    pos_iter = iter(positions) if positions is not None else None
    per_layer: list[torch.Tensor | None] = [None] * arch.n_layers
    current_pos: list[torch.Tensor | None] = [None]

    def make_hook(layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if muted is not None and muted[0]:
                return
            x = args[0]
            if current_pos[0] is None:
                sel = x[:, -1]
            else:
                rows = torch.arange(x.shape[0], device=x.device)
                sel = x[rows, current_pos[0].to(x.device)]
            per_layer[layer] = sel.detach().to("cpu", torch.float32)
            if layer == arch.n_layers - 1:
                raise _StopForward

        return hook

    out: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(make_hook(i)) for i, m in enumerate(arch.modules)]
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = dict(batch) if isinstance(batch, Mapping) else {"input_ids": batch}
                inputs = {
                    k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                    for k, v in inputs.items()
                }
                b = int(inputs["input_ids"].shape[0])
                pos = next(pos_iter, None) if pos_iter is not None else None
                if pos is not None:
                    pos = torch.as_tensor(pos, dtype=torch.long)
                    if pos.shape != (b,):
                        raise PalignError(
                            f"positions for a batch of {b} rows has shape {tuple(pos.shape)}; "
                            "give one position per row"
                        )
                current_pos[0] = pos
                per_layer[:] = [None] * arch.n_layers
                try:
                    model(**inputs, use_cache="past_key_values" in inputs or "cache" in inputs)
                except _StopForward:
                    pass
                if any(t is None for t in per_layer):
                    missing = [i for i, t in enumerate(per_layer) if t is None]
                    raise PalignError(
                        f"o_proj of layers {missing} was not called during the forward "
                        f"({arch.o_proj_path}); pass another o_proj_path"
                    )
                stacked = torch.stack([t for t in per_layer if t is not None], dim=1)
                out.append(stacked.reshape(b, arch.n_layers, arch.n_heads, arch.head_dim))
    finally:
        for h in handles:
            h.remove()
    if not out:
        return torch.zeros(0, arch.n_layers, arch.n_heads, arch.head_dim)
    return torch.cat(out, dim=0)


def capture_prompts(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    arch: ArchSpec | None = None,
    batch_size: int = 8,
    add_special_tokens: bool = False,
    progress: bool = False,
    encode: Callable[[str], Sequence[int]] | None = None,
) -> torch.Tensor:
    """Capture head activations at the last token of each prompt string.

    Prompts are tokenized, sorted by length, left-padded in batches (with explicit position
    ids, so a padded row computes as it would alone) and run without gradients.

    Args:
        model: the model.
        tokenizer: its tokenizer (a pad token is borrowed from EOS if it has none).
        prompts: full prompt texts ending at the token of interest (e.g. the answer letter).
        arch: resolved architecture (default: :func:`resolve_arch`).
        batch_size: rows per forward.
        add_special_tokens: let the tokenizer add BOS etc.; ``False`` (default) for texts
            that already went through the chat template (which writes BOS itself).
        progress: show a tqdm bar.
        encode: optional ``text -> token ids`` used instead of ``tokenizer(text)`` (e.g.
            ``lambda t: palign.models.prompts.encode_prompt(tokenizer, t)``, so capture
            tokenizes exactly like the readout).

    Returns:
        ``(len(prompts), n_layers, n_heads, head_dim)`` float32 on CPU, in prompt order.
    """
    arch = arch if arch is not None else resolve_arch(model)
    if batch_size < 1:
        raise PalignError(f"batch_size must be >= 1, got {batch_size}")
    if encode is None:
        ids = [
            list(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]) for p in prompts
        ]
    else:
        ids = [list(encode(p)) for p in prompts]
    if any(len(x) == 0 for x in ids):
        raise PalignError("an empty prompt cannot be captured; check the prompt builder")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(tokenizer, "eos_token_id", None)
    if pad_id is None:
        pad_id = 0
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    use_pos = _accepts(model, "position_ids")
    if use_pos and _stems_shared(ids) and _cache_ok(model, max(len(x) for x in ids)):
        return _capture_shared_stems(model, ids, int(pad_id), arch, batch_size, progress)
    groups = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if not use_pos:
        # without explicit position ids, a left-padded row would see shifted positions: batch
        # only prompts of equal length (no padding), which is exact, and say why it is slower
        import warnings

        groups = []
        for i in order:
            if groups and len(groups[-1]) < batch_size and len(ids[groups[-1][0]]) == len(ids[i]):
                groups[-1].append(i)
            else:
                groups.append([i])
        if len(groups) > (len(order) + batch_size - 1) // batch_size:
            warnings.warn(
                f"{type(model).__name__}.forward takes no position_ids, so left-padded prompts "
                "would be captured at shifted positions; palign batches only prompts of equal "
                "length instead (exact, but more forwards)",
                stacklevel=2,
            )

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        for group in groups:
            rows = [ids[i] for i in group]
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, seq in enumerate(rows):
                input_ids[r, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[r, width - len(seq) :] = 1
            batch = {"input_ids": input_ids, "attention_mask": mask}
            if use_pos:
                batch["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
            yield batch

    it: Iterable[dict[str, torch.Tensor]] = batches()
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(groups), desc="capture")
    acts = capture_head_activations(model, it, arch=arch)
    result = torch.empty_like(acts)
    result[torch.tensor([i for g in groups for i in g], dtype=torch.long)] = acts
    return result


def _stems_shared(ids: list[list[int]]) -> bool:
    """Whether prompts share their tokens up to the last one (the A/E pairs of PAS)."""
    stems = {tuple(x[:-1]) for x in ids if len(x) > 1}
    return len(stems) < len(ids) and all(len(x) > 1 for x in ids)


def _cache_ok(model: nn.Module, longest: int) -> bool:
    """A model whose forward takes a prompt cache and keeps every token of ``longest``."""
    params = inspect.signature(model.forward).parameters
    if "past_key_values" not in params and "cache" not in params:
        return False
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    window = getattr(cfg, "sliding_window", None)
    return window is None or int(window) >= longest + 1


def _capture_shared_stems(
    model: nn.Module,
    ids: list[list[int]],
    pad_id: int,
    arch: ArchSpec,
    batch_size: int,
    progress: bool,
) -> torch.Tensor:
    """:func:`capture_prompts` for prompts that share everything but their last token.

    Each distinct stem (the prompt without its last token) runs once and fills a prompt
    cache; the last tokens of all its prompts (e.g. the letters ``A`` and ``E``) then run as
    one-token rows on copies of that cache, where the o_proj inputs are read. The same
    attention as a full forward (left padding masked, explicit position ids), so the
    activations equal the plain path's up to float rounding (tested), at about half the
    tokens for the A/E pairs of PAS.
    """
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    keep = {}
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        keep = {"logits_to_keep": 1}
    stems: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(ids):
        stems.setdefault(tuple(x[:-1]), []).append(i)
    keys = sorted(stems, key=len)
    groups = [keys[s : s + batch_size] for s in range(0, len(keys), batch_size)]
    device = _model_device(model)
    muted = [False]
    rows_order: list[int] = []

    def batches() -> Iterator[dict[str, Any]]:
        for group in groups:
            width = max(len(k) for k in group)
            input_ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for r, k in enumerate(group):
                input_ids[r, width - len(k) :] = torch.tensor(k, dtype=torch.long)
                mask[r, width - len(k) :] = 1
            pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
            muted[0] = True
            try:
                with torch.no_grad():
                    out = model(
                        input_ids=input_ids.to(device),
                        attention_mask=mask.to(device),
                        position_ids=pos.to(device),
                        use_cache=True,
                        **keep,
                    )
            finally:
                muted[0] = False
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            which = [r for r, k in enumerate(group) for _ in stems[k]]
            rows_order.extend(i for k in group for i in stems[k])
            cache.batch_select_indices(torch.tensor(which, dtype=torch.long, device=device))
            last = torch.tensor([[ids[i][-1]] for k in group for i in stems[k]])
            sel = torch.tensor(which, dtype=torch.long)
            yield {
                "input_ids": last,
                "attention_mask": torch.cat(
                    [mask[sel], torch.ones(len(which), 1, dtype=torch.long)], dim=1
                ),
                "position_ids": torch.tensor([[len(ids[i]) - 1] for k in group for i in stems[k]]),
                kw: cache,
            }

    it: Iterable[dict[str, Any]] = batches()
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(groups), desc="capture")
    acts = capture_head_activations(model, it, arch=arch, muted=muted)
    result = torch.empty_like(acts)
    result[torch.tensor(rows_order, dtype=torch.long)] = acts
    return result


# --- on-disk cache ------------------------------------------------------------------------


def text_sha256(text: str) -> str:
    """sha256 hex digest of a text (e.g. the chat template, for cache keys)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_key_fields(lm: Any) -> dict[str, Any]:
    """The cache-key fields that identify a loaded model's weights and numerics.

    Model id and revision, ``model_type``, compute dtype, 4-bit quantisation, and the
    fingerprint of the weight files (:func:`palign.models.loading.weights_fingerprint`): a
    local folder has no revision, so retrained weights at the same path differ only there.
    ``lm`` is a :class:`palign.models.loading.LoadedModel` (objects without the newer fields
    give ``None`` / ``False``).
    """
    model = getattr(lm, "model", None)
    return {
        "model_id": getattr(lm, "model_id", None),
        "revision": getattr(lm, "revision", None),
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "dtype": str(getattr(lm, "dtype", None)),
        "load_in_4bit": bool(getattr(lm, "load_in_4bit", False)),
        "weights_fingerprint": getattr(lm, "weights_fingerprint", None),
    }


def activations_cache_dir() -> Path:
    """``$PALIGN_CACHE`` else ``$XDG_CACHE_HOME/palign`` else ``~/.cache/palign``, + ``activations``."""
    return cache_dir("activations")


def _canonical(key_fields: Mapping[str, Any]) -> str:
    try:
        return json.dumps(key_fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except TypeError as e:
        raise PalignError(f"activation cache key fields must be JSON values: {e}") from None


def cache_key(key_fields: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``key_fields`` (sorted keys)."""
    return text_sha256(_canonical(key_fields))


def cached_activations(
    key_fields: Mapping[str, Any],
    compute_fn: Callable[[], torch.Tensor],
    cache_dir: str | os.PathLike[str] | None = None,
) -> torch.Tensor:
    """Return activations from the cache, or compute, store and return them.

    Args:
        key_fields: everything the activations depend on, as JSON values (the model's
            :func:`model_key_fields`: id, revision, dtype, quantisation, weights fingerprint;
            the prompts' hash, inventory, item ids, ...).
        compute_fn: computes the tensor on a miss.
        cache_dir: folder of the entries (default :func:`activations_cache_dir`).

    Entries are ``<sha256>.safetensors`` (tensor ``activations``) plus ``<sha256>.json``
    (the key fields, shape, creation time), written atomically (temp file + rename). An
    unreadable or mismatching entry is recomputed.
    """
    from safetensors.torch import load_file, save_file

    folder = Path(cache_dir) if cache_dir is not None else activations_cache_dir()
    canonical = _canonical(key_fields)
    key = text_sha256(canonical)
    tensor_path = folder / f"{key}.safetensors"
    meta_path = folder / f"{key}.json"
    if tensor_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if _canonical(meta["key_fields"]) != canonical:
                raise ValueError("key fields differ")
            acts = load_file(str(tensor_path))["activations"]
            if list(acts.shape) != meta["shape"]:
                raise ValueError("shape differs")
            return acts
        except Exception as e:  # corrupt entry: recompute and overwrite
            warnings.warn(
                f"ignoring unreadable activation cache entry {tensor_path}: {e}", stacklevel=2
            )
    acts = compute_fn()
    if not isinstance(acts, torch.Tensor):
        raise PalignError("compute_fn must return a torch.Tensor of activations")
    acts = acts.detach().to("cpu").contiguous()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(tensor_path, lambda p: save_file({"activations": acts}, p))
        meta = {
            "key": key,
            "key_fields": json.loads(canonical),
            "shape": list(acts.shape),
            "dtype": str(acts.dtype),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write(
            meta_path, lambda p: Path(p).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        )
    except OSError as e:
        warnings.warn(f"could not write the activation cache in {folder}: {e}", stacklevel=2)
    return acts
