"""Where the attention output projection lives, per architecture.

PAS steers attention heads where they enter the attention output projection (``o_proj`` in
Llama-like models, ``attn.c_proj`` in GPT-2). Its input is the concatenation of the query
heads' outputs, ``n_heads * head_dim`` wide (for GQA/MQA models too: key/value heads are
shared, but every *query* head has its own slice of the o_proj input).

:data:`ARCH_TABLE` maps ``config.model_type`` to an :class:`ArchEntry` (module paths);
:func:`resolve_arch` finds the modules in a concrete model and returns an :class:`ArchSpec`
(modules, sizes, and ``W_o`` per layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from palign.errors import PalignError

__all__ = ["ARCH_TABLE", "ArchEntry", "ArchSpec", "resolve_arch"]


@dataclass(frozen=True)
class ArchEntry:
    """Module paths of one architecture family.

    Attributes:
        layers_paths: candidate dotted paths of the decoder-layer list, tried in order
            (e.g. ``("model.layers", "layers")``; the bare-model and multimodal variants too).
        attn_name: name of the attention submodule inside a decoder layer.
        o_proj_name: name of the output projection inside the attention module.
        conv1d: whether the projection is a GPT-2 style ``Conv1D`` (weight ``(in, out)``).
    """

    layers_paths: tuple[str, ...]
    attn_name: str = "self_attn"
    o_proj_name: str = "o_proj"
    conv1d: bool = False


_LLAMA_LIKE = ArchEntry(
    layers_paths=(
        "model.layers",
        "layers",
        "model.language_model.layers",
        "language_model.layers",
        "language_model.model.layers",
    )
)

#: ``model_type`` -> module paths. Gemma 3: ``gemma3_text`` is ``Gemma3ForCausalLM``
#: (``model.layers``); ``gemma3`` is the multimodal ``Gemma3ForConditionalGeneration``
#: (``model.language_model.layers``); both resolve through the candidate list.
ARCH_TABLE: dict[str, ArchEntry] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "gpt2": ArchEntry(
        layers_paths=("transformer.h", "h"), attn_name="attn", o_proj_name="c_proj", conv1d=True
    ),
}

_TEMPLATE_HINT = (
    "pass the output projection's path as a template, e.g. "
    'o_proj_path="model.layers.{i}.self_attn.o_proj" (CLI: --o-proj-path)'
)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


@dataclass
class ArchSpec:
    """A model's attention output projections, resolved.

    Attributes:
        model_type: ``config.model_type`` (``"custom"`` when resolved from a template only).
        o_proj_path: dotted path template of the projections, with ``{i}`` for the layer.
        modules: the ``n_layers`` projection modules, in layer order.
        n_layers: number of decoder layers.
        n_heads: number of *query* heads entering the projection.
        head_dim: width of one head's slice of the projection input.
        hidden: width of the projection output (the model's hidden size).
        conv1d: whether the projection is a GPT-2 ``Conv1D`` (weight stored ``(in, out)``).
    """

    model_type: str
    o_proj_path: str
    modules: list[nn.Module] = field(repr=False)
    n_layers: int
    n_heads: int
    head_dim: int
    hidden: int
    conv1d: bool = False

    @property
    def in_features(self) -> int:
        """Width of the projection input, ``n_heads * head_dim``."""
        return self.n_heads * self.head_dim

    def w_o(
        self, layer: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """``W_o`` of ``layer`` as ``(hidden, n_heads * head_dim)``: ``out = W_o @ in + b``.

        Handles ``nn.Linear`` (weight ``(out, in)``), GPT-2 ``Conv1D`` (weight ``(in, out)``)
        and bitsandbytes 4-bit weights (dequantized).
        """
        mod = self.modules[layer]
        weight = mod.weight
        w: torch.Tensor
        if getattr(weight, "quant_state", None) is not None:  # bitsandbytes Params4bit
            try:
                import bitsandbytes.functional as bnbf  # type: ignore[import-not-found]
            except ImportError as e:  # pragma: no cover - needs bitsandbytes
                raise PalignError(
                    "cannot read a 4-bit o_proj weight without bitsandbytes; "
                    "install bitsandbytes or load the model without --4bit"
                ) from e
            w = bnbf.dequantize_4bit(weight.data, weight.quant_state)  # pragma: no cover
        else:
            w = weight.detach()
        if self.conv1d:
            w = w.t()
        if tuple(w.shape) != (self.hidden, self.in_features):
            raise PalignError(
                f"o_proj weight of layer {layer} has shape {tuple(w.shape)}, expected "
                f"({self.hidden}, {self.in_features}); quantized weights of this kind are not "
                "supported for steering; load the model in 16/32-bit"
            )
        return w.to(dtype=dtype, device=device)

    def w_o_fn(self) -> Callable[[int], torch.Tensor]:
        """``w_o`` as a plain callable (float32, CPU), for :mod:`palign.steering.pas`."""
        return lambda layer: self.w_o(layer)


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _text_config(model: nn.Module) -> object | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    get_text = getattr(cfg, "get_text_config", None)
    if callable(get_text):
        try:
            return get_text()
        except Exception:  # odd configs: fall back to the top-level one
            return cfg
    return cfg


def _in_out(module: nn.Module, conv1d: bool) -> tuple[int, int]:
    if conv1d:
        weight = module.weight
        return int(weight.shape[0]), int(module.nf)
    in_f = getattr(module, "in_features", None)
    out_f = getattr(module, "out_features", None)
    if in_f is None or out_f is None:
        raise PalignError(
            f"the output projection {type(module).__name__} has no in_features/out_features; "
            f"it is not a linear layer; {_TEMPLATE_HINT}"
        )
    return int(in_f), int(out_f)


def resolve_arch(
    model: nn.Module, o_proj_path: str | None = None, n_heads: int | None = None
) -> ArchSpec:
    """Find the attention output projections of ``model``.

    Args:
        model: a Hugging Face causal LM (or its bare base model).
        o_proj_path: optional template of the projection path with ``{i}`` for the layer
            index (e.g. ``"model.layers.{i}.self_attn.o_proj"``); overrides the table.
        n_heads: number of query heads, when the config does not say
            (``num_attention_heads``).

    Returns:
        The resolved :class:`ArchSpec`.

    Raises:
        PalignError: unknown ``model_type`` without ``o_proj_path``, a path that does not
            exist, or sizes that do not fit together.
    """
    cfg = getattr(model, "config", None)
    model_type = str(getattr(cfg, "model_type", "") or "") or "custom"
    conv1d = False
    if o_proj_path is not None:
        if "{i}" not in o_proj_path:
            raise PalignError(
                f"o_proj_path {o_proj_path!r} has no '{{i}}' placeholder for the layer index; "
                f"{_TEMPLATE_HINT}"
            )
        template = o_proj_path
        modules: list[nn.Module] = []
        while (m := _get(model, template.format(i=len(modules)))) is not None:
            modules.append(m)
        if not modules:
            raise PalignError(
                f"no module at {template.format(i=0)!r} in this {model_type} model; "
                f"{_TEMPLATE_HINT}"
            )
        conv1d = _is_conv1d(modules[0])
    else:
        entry = ARCH_TABLE.get(model_type)
        if entry is None:
            raise PalignError(
                f"unsupported architecture {model_type!r}: palign does not know where its "
                f"attention output projection is (e.g. model.layers.{{i}}.self_attn.o_proj); "
                f"{_TEMPLATE_HINT}"
            )
        layers = None
        for path in entry.layers_paths:
            cand = _get(model, path)
            if isinstance(cand, (nn.ModuleList, nn.Sequential)) and len(cand) > 0:
                layers, layers_path = cand, path
                break
        if layers is None:
            raise PalignError(
                f"{model_type} model has no decoder-layer list at any of "
                f"{', '.join(entry.layers_paths)}; {_TEMPLATE_HINT}"
            )
        template = f"{layers_path}.{{i}}.{entry.attn_name}.{entry.o_proj_name}"
        modules = []
        for i in range(len(layers)):
            m = _get(model, template.format(i=i))
            if m is None:
                raise PalignError(
                    f"{model_type} model has no module {template.format(i=i)!r}; {_TEMPLATE_HINT}"
                )
            modules.append(m)
        conv1d = entry.conv1d or _is_conv1d(modules[0])

    in_f, hidden = _in_out(modules[0], conv1d)
    for i, m in enumerate(modules):
        if _in_out(m, conv1d) != (in_f, hidden):
            raise PalignError(
                f"o_proj of layer {i} ({template.format(i=i)}) has a different shape than "
                "layer 0; per-layer head counts are not supported"
            )
    text_cfg = _text_config(model)
    heads = n_heads or getattr(text_cfg, "num_attention_heads", None)
    if not heads:
        raise PalignError(
            f"cannot tell the number of attention heads of this {model_type} model "
            "(config.num_attention_heads is missing); pass n_heads"
        )
    heads = int(heads)
    if in_f % heads:
        raise PalignError(
            f"o_proj input width {in_f} is not a multiple of {heads} heads "
            f"({template.format(i=0)}); pass n_heads or another o_proj_path"
        )
    head_dim = in_f // heads
    cfg_head_dim = getattr(text_cfg, "head_dim", None)
    if isinstance(cfg_head_dim, int) and cfg_head_dim and cfg_head_dim != head_dim:
        raise PalignError(
            f"o_proj input width {in_f} / {heads} heads = {head_dim} differs from "
            f"config.head_dim={cfg_head_dim}; pass n_heads or another o_proj_path"
        )
    return ArchSpec(
        model_type=model_type,
        o_proj_path=template,
        modules=modules,
        n_layers=len(modules),
        n_heads=heads,
        head_dim=head_dim,
        hidden=hidden,
        conv1d=conv1d,
    )
