"""Bake one person's PAS shift into a plain Hugging Face model folder (``palign export``).

PAS with steering at all positions adds the constant vector ``u_l`` to the output of layer
``l``'s attention output projection at every position of every forward: exactly what a bias
of ``o_proj`` does. The exported folder is the base model with ``o_proj.bias = u_l``, loadable
by stock ``transformers`` (``AutoModelForCausalLM.from_pretrained``) and by servers that read
Hugging Face folders (vLLM, TGI), with no palign in the loop.

How the bias is switched on, per architecture (``EXPORTABLE``; docs/serving.md has the table
with the vLLM and llama.cpp files it was checked against):

- Llama and Gemma 3: ``attention_bias`` set to true (transformers and vLLM build their o_proj
  with a bias then); the q/k/v projections get a bias too, written as zeros;
- Qwen2 and Mistral (no o_proj bias in their classes): written as a Llama (the same weights
  and names; Qwen2's q/k/v biases kept) with ``attention_bias`` true;
- Qwen3, Gemma 1, OLMo 2: refused. transformers would load their bias, but vLLM builds their
  o_proj without one and skips unknown ``.bias`` tensors when loading, so the export would be
  served *unaligned* with no error. Any other architecture: refused (not checked).

Only adapters fitted at steering position ``"all"`` are exact as a bias; one fitted at
``"last"`` is refused unless ``steer_position="all"`` acknowledges the change (recorded).
The personality's system prompt (the one ``palign serve`` adds to chats without one) is
written into the exported chat template, so a chat without a system message is answered the
same by the export as by ``palign serve``.

The weights are written in the base model's own dtype by default (``dtype="auto"``: its
config's ``torch_dtype``; for a GGUF, its tensor type: F32/F16/BF16 as stored, bfloat16 for a
quantised one), and ``config.json`` / ``tokenizer_config.json`` carry the keys transformers
4.x reads too (top-level ``rope_theta``, ``torch_dtype``, ``PreTrainedTokenizerFast``, the
chat template).

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
#: model types exported with their own class (o_proj bias honoured by transformers and vLLM)
EXPORTABLE = ("llama", "gemma3_text")
#: model types vLLM builds without an o_proj bias (it would drop ours silently)
_DROPPED = {
    "qwen3": "vllm/model_executor/models/qwen3.py",
    "gemma": "vllm/model_executor/models/gemma.py",
    "olmo2": "vllm/model_executor/models/olmo2.py",
}
_GGUF_DTYPES = {0: "float32", 1: "float16", 32: "bfloat16"}  # general.file_type
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


def export_record(
    src: Path,
    pas: Any,
    alpha: float,
    fitted: str,
    system_prompt: str | None,
    base_model: dict[str, Any],
    *,
    fmt: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The record an export keeps beside its weights (folder) or in its metadata (GGUF): the
    adapter, person, alpha, steering position, system prompt and base model, then ``extra``
    (the export kind's own fields), the palign version and the time."""
    record: dict[str, Any] = {"kind": "palign-export"}
    if fmt is not None:
        record["format"] = fmt
    record |= {
        "adapter": str(src.resolve()),
        "person": pas.config.get("person"),
        "alpha": alpha,
        "steer_position": "all",
        "fitted_steer_position": fitted,
        "steer_position_acknowledged": fitted != "all",
        "system_prompt": system_prompt,
        "base_model": base_model,
    }
    return (
        record
        | extra
        | {
            "palign_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )


def check_position(
    src: Path, pas: Any, steer_position: str | None, what: str = "an o_proj bias"
) -> str:
    """The position ``pas`` was fitted at; a ``last`` adapter is refused unless acknowledged.

    Raises:
        PalignError: fitted at ``last`` (or unrecorded) and ``steer_position`` is not "all".
    """
    from palign.chat import adapter_position

    fitted = adapter_position(pas)
    if fitted != "all" and steer_position != "all":
        raise PalignError(
            f"adapter {src} was fitted with steering at the {fitted} position only; {what} "
            "steers every position, so the export would answer unlike palign serve. "
            "Re-fit it with 'palign align --steer-position all', or pass --steer-position all "
            "to export it at all positions anyway (recorded in the export)"
        )
    return fitted


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
    elif mt in _DROPPED:
        raise PalignError(
            f"cannot export a {mt} model: vLLM builds its o_proj without a bias "
            f"({_DROPPED[mt]}) and skips the tensor, so the export would be served unaligned "
            "with no error; serve this personality with 'palign serve' instead"
        )
    elif mt in EXPORTABLE and hasattr(cfg, "attention_bias"):
        new_cfg = type(cfg).from_dict(cfg.to_dict())
        new_cfg.attention_bias = True
        qkv_bias = True
    else:
        raise PalignError(
            f"cannot export a {mt} model: palign has not checked that vLLM and transformers "
            f"load an o_proj bias for it (exportable: {', '.join(EXPORTABLE + _AS_LLAMA)}); "
            "serve it with 'palign serve' instead"
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


def native_dtype(spec: str) -> tuple[torch.dtype | None, str]:
    """The base model's own weights dtype and where it was read.

    A model folder or hub id: its config's ``torch_dtype`` / ``dtype``. A GGUF (a path or a
    model alias): its ``general.file_type``: F32, F16 or BF16 as stored; a quantised GGUF has no
    original dtype, so bfloat16 (what SmolLM2, Qwen2.5 and Gemma 3 are released in; it keeps
    float32's range, so dequantised weights cannot overflow as they could in float16). A model
    built in memory, or no readable record: ``(None, why)``.
    """
    gguf_path: Path | None = None
    try:
        from palign.models.loading import alias_gguf
        from palign.models.registry import is_alias

        if is_alias(spec):
            gguf_path = alias_gguf(spec)
    except Exception:  # no weights package: not a GGUF we can read
        gguf_path = None
    if gguf_path is None and spec.lower().endswith(".gguf"):
        gguf_path = Path(spec).expanduser()
    if gguf_path is not None and gguf_path.is_file():
        try:
            from gguf import GGUFReader

            field = GGUFReader(str(gguf_path)).fields["general.file_type"]
            ftype = int(field.parts[field.data[0]][0])
        except Exception:
            ftype = -1
        name = _GGUF_DTYPES.get(ftype)
        if name is not None:
            return getattr(torch, name), f"GGUF general.file_type {ftype} ({name})"
        return torch.bfloat16, f"GGUF general.file_type {ftype} (quantised): bfloat16"
    src = Path(spec).expanduser()
    cfg_path = src / "config.json" if src.is_dir() else None
    if cfg_path is not None and cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cfg = {}
        name = cfg.get("torch_dtype") or cfg.get("dtype")
        if isinstance(name, str) and name in ("float32", "float16", "bfloat16"):
            return getattr(torch, name), f"config.json dtype {name}"
    return None, "no dtype recorded"


def _sys_template(tok: Any, system_prompt: str | None) -> str | None:
    """The chat template with ``system_prompt`` as the default system turn (as palign serve).

    palign serve adds the personality's system prompt to chats that have none; the exported
    template does the same, so ``vllm serve EXPORT`` answers such chats alike. Templates that
    refuse a system turn get it merged into the first message (as :func:`palign.chat.chat_ids`).
    """
    tmpl = getattr(tok, "chat_template", None)
    if not isinstance(tmpl, str) or not tmpl or not system_prompt:
        return tmpl if isinstance(tmpl, str) else None
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        merge = False
    except Exception:
        merge = True
    lit = json.dumps(system_prompt, ensure_ascii=False)  # a valid Jinja string literal
    if merge:
        head = (
            "{% if messages and messages[0]['role'] != 'system' %}{% set messages = "
            f"[{{'role': messages[0]['role'], 'content': {lit} + '\\n\\n' + "
            "messages[0]['content']}] + messages[1:] %}{% endif %}"
        )
    else:
        head = (
            "{% if messages and messages[0]['role'] != 'system' %}{% set messages = "
            f"[{{'role': 'system', 'content': {lit}}}] + messages %}}{{% endif %}}"
        )
    return head + tmpl


def _v4_compatible(folder: Path, dtype: torch.dtype, chat_template: str | None) -> None:
    """Add the keys transformers 4.x reads to the written config and tokenizer config."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in cfg and "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" and "rope_scaling" not in cfg:
            cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    cfg["torch_dtype"] = str(dtype).replace("torch.", "")
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tc_path = folder / "tokenizer_config.json"
    if tc_path.is_file():
        tc = json.loads(tc_path.read_text(encoding="utf-8"))
        if tc.get("tokenizer_class") in (None, "TokenizersBackend"):
            tc["tokenizer_class"] = "PreTrainedTokenizerFast"
        if chat_template:
            tc["chat_template"] = chat_template
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
    steer_position: str | None = None,
) -> dict[str, Any]:
    """Write ``adapter``'s person as a standard model folder ``out`` (o_proj bias = ``u``).

    Args:
        adapter: a PAS adapter folder (``palign align``).
        out: the model folder to write (must not exist, or be an earlier palign export).
        model: the base model (loaded, or a spec); default: the one the adapter records.
        alpha: steering strength (default: the adapter's fitted alpha).
        device: where to load the base model.
        dtype: weights dtype of the export (``"float32"``, ``"float16"``, ``"bfloat16"``);
            ``"auto"``: the base model's own (:func:`native_dtype`). The base model is
            loaded in it for the check. With a loaded ``model``: its dtype.
        force: accept a base model id/revision other than the recorded one.
        verify: load the export with ``AutoModelForCausalLM`` and compare its logits with
            the steered base model (position "all") on ``prompts``.
        prompts: user messages for the check (chat template applied).
        steer_position: ``"all"`` acknowledges exporting an adapter fitted at ``"last"``
            (a bias steers every position; recorded). Without it such adapters are refused.

    Returns:
        the record written to ``out/palign_export.json`` (with the check's max |logit diff|).

    Raises:
        PalignError: unsupported architecture, bad adapter, ``last`` adapter without
            ``steer_position="all"``, existing ``out``, failed check.
    """
    from transformers import AutoModelForCausalLM

    from palign.chat import chat_ids

    if steer_position not in (None, "all"):
        raise PalignError(
            f"--steer-position {steer_position} cannot be exported: an o_proj bias steers every "
            "position; use --steer-position all (or serve the personality with palign serve)"
        )
    if dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise PalignError(f"--dtype {dtype} is not one of auto, float32, float16, bfloat16")
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
    if isinstance(model, LoadedModel):
        lm = model
        if dtype != "auto" and getattr(torch, dtype) != lm.dtype:
            raise PalignError(
                f"the loaded model is {lm.dtype}, not {dtype}; pass the model spec to export "
                "in another dtype"
            )
        want, dtype_source = lm.dtype, "the loaded model's dtype"
    else:
        if dtype == "auto":
            native, dtype_source = native_dtype(model)
            if native is None:
                native, dtype_source = torch.float32, f"{dtype_source}: float32"
            want = native
        else:
            want, dtype_source = getattr(torch, dtype), "--dtype"
        lm = load_model(model, device=device, dtype=str(want).replace("torch.", ""))
    pas = load_adapter(src, lm, force=force)
    fitted = check_position(src, pas, steer_position)
    system_prompt = (pas.config.get("extra") or {}).get("system_prompt")
    template = _sys_template(lm.tokenizer, system_prompt)
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
        old_template = getattr(lm.tokenizer, "chat_template", None)
        try:
            if template is not None:
                lm.tokenizer.chat_template = template  # with the personality's system prompt
            lm.tokenizer.save_pretrained(tmp)
        finally:
            lm.tokenizer.chat_template = old_template
        _v4_compatible(tmp, want, template)
        record = export_record(
            src,
            pas,
            a,
            fitted,
            system_prompt,
            {
                "id": lm.model_id,
                "revision": lm.revision,
                "model_type": lm.model.config.model_type,
            },
            exported_model_type=cfg.model_type,
            dtype=str(next(lm.model.parameters()).dtype).replace("torch.", ""),
            dtype_source=dtype_source,
        )
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
