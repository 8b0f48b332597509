"""Bake one person's PAS shift into a plain Hugging Face model folder (``palign export``).

PAS with steering at all positions adds the constant vector ``u_l`` to the output of layer
``l``'s attention output projection at every position of every forward: exactly what a bias
of ``o_proj`` does. The exported folder is the base model with ``o_proj.bias = u_l``, loadable
by stock ``transformers`` (``AutoModelForCausalLM.from_pretrained``) and by servers that read
Hugging Face folders (vLLM, TGI), with no palign in the loop.

How the bias is switched on, per architecture:

- configs with ``attention_bias`` (Llama, Gemma 1-3, Qwen3, OLMo 2, Granite, SmolLM3): set it
  to true; the q/k/v projections get a bias too, which is written as zeros;
- Qwen2 and Mistral (no o_proj bias in their classes): written as a Llama (the same weights
  and names; Qwen2's q/k/v biases kept) with ``attention_bias`` true;
- anything else: an error.

Every export is verified (unless ``verify=False``): the written folder is loaded with
``AutoModelForCausalLM`` and its logits are compared with palign's steered base model
(position ``"all"``) on a few prompts; a mismatch is an error and nothing is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from palign import __version__
from palign.errors import PalignError
from palign.models.loading import LoadedModel, _dtype_kw, _quiet_progress, load_model
from palign.steering.adapter import ADAPTER_CONFIG, load_adapter
from palign.steering.arch import resolve_arch
from palign.steering.intervene import steer

__all__ = ["EXPORT_RECORD", "VERIFY_PROMPTS", "export_adapter"]

EXPORT_RECORD = "palign_export.json"
_AS_LLAMA = ("qwen2", "mistral")
VERIFY_PROMPTS = (
    "How do you spend a free evening?",
    "Describe yourself in three sentences.",
    "What do you do when plans change at the last minute?",
)


def _adapter_model_spec(folder: Path) -> str | None:
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    extra = cfg.get("extra") or {}
    return extra.get("model_spec") or (cfg.get("base_model") or {}).get("id")


def _attention(model: nn.Module, o_proj: nn.Module) -> nn.Module:
    for mod in model.modules():
        if any(child is o_proj for child in mod.children()):
            return mod
    raise PalignError("cannot find the attention module of an o_proj; unsupported model layout")


def _llama_config(config: Any) -> Any:
    """``config`` (Qwen2 / Mistral) as an equivalent LlamaConfig with attention bias."""
    from transformers import LlamaConfig

    d = config.to_dict()
    mt = d.get("model_type")
    if mt == "qwen2" and d.get("use_sliding_window"):
        raise PalignError("this Qwen2 model uses sliding-window attention; export needs it off")
    if (
        mt == "mistral"
        and d.get("sliding_window") not in (None, 0)
        and int(d["sliding_window"]) < int(d.get("max_position_embeddings", 0))
    ):
        raise PalignError(
            "this Mistral model uses sliding-window attention, which a Llama export cannot "
            "express; export is not supported for it"
        )
    for k in (
        "model_type",
        "architectures",
        "use_sliding_window",
        "sliding_window",
        "max_window_layers",
        "layer_types",
        "transformers_version",
    ):
        d.pop(k, None)
    d["attention_bias"] = True
    d["mlp_bias"] = False
    return LlamaConfig(**d)


def _set_biases(model: nn.Module, u: torch.Tensor) -> tuple[list[tuple[nn.Module, Any]], Any]:
    """Give every o_proj the bias ``u[l]`` (q/k/v a zero bias where the config adds one).

    Returns:
        ``(undo, saved_config)``: the (module, old bias) pairs and the config to write.
    """
    arch = resolve_arch(model)
    cfg = model.config
    mt = getattr(cfg, "model_type", None)
    if arch.conv1d:
        raise PalignError("export supports Llama-like models (o_proj Linear); not GPT-2 Conv1D")
    if mt in _AS_LLAMA:
        new_cfg = _llama_config(cfg)
        qkv_bias = False  # Qwen2 has them already, Mistral has none: Llama's flag adds zeros
    elif hasattr(cfg, "attention_bias"):
        new_cfg = type(cfg).from_dict(cfg.to_dict())
        new_cfg.attention_bias = True
        qkv_bias = True
    else:
        raise PalignError(
            f"cannot export a {mt} model: its config has no attention_bias switch for an "
            "o_proj bias; serve it with 'palign serve' instead"
        )
    undo: list[tuple[nn.Module, Any]] = []
    p = next(model.parameters())
    for layer, o_proj in enumerate(arch.modules):
        if not isinstance(o_proj, nn.Linear):
            raise PalignError("export needs plain nn.Linear o_proj weights (no quantization)")
        attn = _attention(model, o_proj)
        targets = [(o_proj, u[layer])]
        for name in ("q_proj", "k_proj", "v_proj"):
            lin = getattr(attn, name, None)
            if not isinstance(lin, nn.Linear):
                raise PalignError(f"export needs separate q/k/v projections; {mt} has no {name}")
            if lin.bias is None:
                if mt in _AS_LLAMA or qkv_bias:
                    targets.append((lin, torch.zeros(lin.out_features)))
        for mod, vec in targets:
            undo.append((mod, mod.bias))
            mod.bias = nn.Parameter(vec.to(device=p.device, dtype=p.dtype), requires_grad=False)
    return undo, new_cfg


def _undo(undo: list[tuple[nn.Module, Any]]) -> None:
    for mod, old in reversed(undo):
        mod.bias = old


def _logits(model: nn.Module, ids: list[list[int]]) -> list[torch.Tensor]:
    out = []
    dev = next(model.parameters()).device
    with torch.inference_mode():
        for seq in ids:
            x = torch.tensor([seq], device=dev)
            out.append(
                model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().cpu()
            )
    return out


def export_adapter(
    adapter: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: LoadedModel | str | None = None,
    alpha: float | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    force: bool = False,
    verify: bool = True,
    prompts: tuple[str, ...] = VERIFY_PROMPTS,
) -> dict[str, Any]:
    """Write ``adapter``'s person as a standard model folder ``out`` (o_proj bias = ``u``).

    Args:
        adapter: a PAS adapter folder (``palign align``).
        out: the model folder to write (must not exist, or be an earlier palign export).
        model: the base model (loaded, or a spec); default: the one the adapter records.
        alpha: steering strength (default: the adapter's fitted alpha).
        device: where to load the base model.
        dtype: weights dtype of the base model and of the export.
        force: accept a base model id/revision other than the recorded one.
        verify: load the export with ``AutoModelForCausalLM`` and compare its logits with
            the steered base model (position "all") on ``prompts``.
        prompts: user messages for the check (chat template applied).

    Returns:
        the record written to ``out/palign_export.json`` (with the check's max |logit diff|).

    Raises:
        PalignError: unsupported architecture, bad adapter, existing ``out``, failed check.
    """
    from transformers import AutoModelForCausalLM

    from palign.chat import chat_ids

    src = Path(adapter)
    dst = Path(out)
    if dst.exists() and (
        not dst.is_dir() or (any(dst.iterdir()) and not (dst / EXPORT_RECORD).is_file())
    ):
        raise PalignError(f"{dst} exists and is not an earlier palign export; choose another --out")
    if model is None:
        model = _adapter_model_spec(src)
        if model is None:
            raise PalignError(f"{src} is not a palign adapter (no readable {ADAPTER_CONFIG})")
    lm = model if isinstance(model, LoadedModel) else load_model(model, device=device, dtype=dtype)
    pas = load_adapter(src, lm, force=force)
    a = pas.alpha if alpha is None else float(alpha)
    u = pas.u_at(a)
    ids = [chat_ids(lm, [{"role": "user", "content": p}]) for p in prompts] if verify else []
    with steer(lm.model, u, position="all"):
        ref = _logits(lm.model, ids)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        undo, cfg = _set_biases(lm.model, u)
        try:
            with _quiet_progress():
                lm.model.save_pretrained(tmp)
        finally:
            _undo(undo)
        cfg.architectures = (
            ["LlamaForCausalLM"]
            if cfg.model_type == "llama"
            else list(lm.model.config.architectures or [])
        )
        cfg.save_pretrained(tmp)  # the config with the bias switched on (and Llama for Qwen2)
        lm.tokenizer.save_pretrained(tmp)
        record: dict[str, Any] = {
            "kind": "palign-export",
            "adapter": str(src.resolve()),
            "person": pas.config.get("person"),
            "alpha": a,
            "steer_position": "all",
            "base_model": {
                "id": lm.model_id,
                "revision": lm.revision,
                "model_type": lm.model.config.model_type,
            },
            "exported_model_type": cfg.model_type,
            "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
            "palign_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if verify:
            with _quiet_progress():
                exported = AutoModelForCausalLM.from_pretrained(
                    tmp, **_dtype_kw(next(lm.model.parameters()).dtype)
                )
            exported = exported.to(lm.device).eval()
            got = _logits(exported, ids)
            del exported
            diff = max(float((g - r).abs().max()) for g, r in zip(got, ref))
            scale = max(float(r.abs().max()) for r in ref)
            half = next(lm.model.parameters()).dtype in (torch.float16, torch.bfloat16)
            tol = (3e-2 if half else 1e-4) * max(1.0, scale)
            same_top = all(bool((g.argmax(-1) == r.argmax(-1)).all()) for g, r in zip(got, ref))
            record["verification"] = {
                "prompts": list(prompts),
                "max_abs_logit_diff": diff,
                "tolerance": tol,
                "same_argmax": same_top,
            }
            if diff > tol:
                raise PalignError(
                    f"the exported model's logits differ from the steered model's by {diff:.3g} "
                    f"(tolerance {tol:.3g}); this architecture does not load the o_proj bias as "
                    "expected, so nothing was written"
                )
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    record["out"] = str(dst)
    return record
