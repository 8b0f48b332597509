"""One person as a GGUF file for llama.cpp, Ollama and LM Studio (``palign export --to gguf``).

The PAS shift at all positions is an ``o_proj`` bias (:mod:`palign.serve.export`); in GGUF
names that is ``blk.N.attn_output.bias``. The export copies the base model's GGUF unchanged
(every tensor byte for byte, so its quantisation is kept, and every metadata key) and adds
one F32 tensor ``blk.N.attn_output.bias = u_N`` per layer, the ``palign.*`` keys naming the
person, alpha and adapter, and the personality's system prompt as the default system turn
of ``tokenizer.chat_template`` (as ``palign serve`` adds it to chats without one).

Only GGUF base models (a model alias, whose weights ship as GGUF files, or a ``.gguf`` path)
can be exported this way; a Hugging Face folder or hub id is refused (export a folder and
convert it with llama.cpp's ``convert_hf_to_gguf.py``).

Which llama.cpp architectures use the tensor (read in ggml-org/llama.cpp; docs/serving.md
has the table):

- ``llama``: loaded as the optional ``wo_b``/``bo`` (``TENSOR_NOT_REQUIRED``) and added after
  the attention output projection (``src/models/llama.cpp``, ``build_attn(..., wo, wo_b,
  ...)``); Ollama's own engine too (``model/models/llama/model.go``: ``attn_output`` is an
  ``nn.Linear`` whose optional bias is added). Exported.
- ``qwen2``: its loader creates no ``attn_output.bias`` (``src/llama-model.cpp``,
  ``load_tensors``, ``case LLM_ARCH_QWEN2``; ``load_arch_tensors`` in
  ``src/models/qwen2.cpp`` in newer versions), and llama.cpp refuses a file with a tensor
  nobody created
  (``done_getting_tensors: wrong number of tensors``). Refused (rewriting it as ``llama``
  would need NEOX -> NORM rope row permutations of the quantised Q/K weights).
- ``gemma3``: the loader creates no such tensor and the graph passes no output bias
  (``src/models/gemma3.cpp``, ``build_attn(inp_attn, model.layers[il].wo, NULL, ...)``).
  Refused.
- anything else: refused (not checked).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from palign import __version__
from palign.errors import PalignError

__all__ = [
    "GGUF_EXPORTABLE",
    "GGUF_REFUSED",
    "base_gguf",
    "export_gguf",
    "ollama_modelfile",
    "read_gguf_export",
]

#: GGUF architectures whose llama.cpp model applies ``blk.N.attn_output.bias``
GGUF_EXPORTABLE = ("llama",)
#: architectures checked and refused, with the reason
GGUF_REFUSED = {
    "qwen2": "llama.cpp's qwen2 loader creates no attn_output.bias (src/llama-model.cpp "
    "load_tensors, src/models/qwen2.cpp in newer versions) and refuses a GGUF with an extra "
    "tensor",
    "gemma3": "llama.cpp's gemma3 model neither loads nor adds an attention output bias "
    "(src/models/gemma3.cpp passes NULL to build_attn)",
}
_BIAS = "blk.{}.attn_output.bias"
_WEIGHT = "blk.{}.attn_output.weight"


def base_gguf(spec: str) -> Path:
    """The GGUF file of a base model spec: a model alias's weights or a ``.gguf`` path.

    Raises:
        PalignError: a hub id or a model folder (no GGUF to copy), or a missing file.
    """
    from palign.models.registry import is_alias

    if is_alias(spec):
        from palign.models.loading import alias_gguf

        return alias_gguf(spec)
    if str(spec).lower().endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise PalignError(f"GGUF file not found: {spec}; check the path")
        return path
    raise PalignError(
        f"--to gguf needs a GGUF base model (a model alias or a .gguf file), not {spec}; "
        "export a folder instead (--to folder) and convert it with llama.cpp's "
        "convert_hf_to_gguf.py"
    )


def ollama_modelfile(gguf_name: str, system_prompt: str | None) -> str:
    """An Ollama Modelfile for the export: ``FROM ./NAME`` and the personality's system prompt.

    Ollama never runs a GGUF's Jinja chat template: ``ollama create`` picks the closest of its
    own Go templates (``template.Named``: Levenshtein distance under 100, else the bare
    prompt), so the default system turn written into ``tokenizer.chat_template`` does not
    reach it; the Modelfile's ``SYSTEM`` line states it, and a ``TEMPLATE`` may be needed
    (docs/serving.md).
    """
    lines = [
        f"FROM ./{gguf_name}",
        "# Ollama does not run the GGUF's Jinja template: add a TEMPLATE for the base model's "
        "chat format if 'ollama show --template' is bare (see palign's docs/serving.md)",
    ]
    if system_prompt:
        lines.append('SYSTEM """' + system_prompt.replace('"""', '\\"\\"\\"') + '"""')
    return "\n".join(lines) + "\n"


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def read_gguf_export(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``palign.export`` record of a GGUF written by :func:`export_gguf` (``{}`` if none)."""
    from gguf import GGUFReader

    raw = _field(GGUFReader(str(path)), "palign.export")
    return json.loads(raw) if isinstance(raw, str) else {}


def _is_export(path: Path) -> bool:
    try:
        return bool(read_gguf_export(path))
    except Exception:
        return False


def _read_back(path: Path, base: Any, u: np.ndarray) -> dict[str, Any]:
    """Check the written file: every base tensor present with the same type and bytes, one
    F32 bias per layer equal to ``u``; a mismatch is an error (nothing is kept)."""
    from gguf import GGMLQuantizationType, GGUFReader

    got = {t.name: t for t in GGUFReader(str(path)).tensors}
    for t in base.tensors:
        if t.name.endswith(".attn_output.bias"):
            continue
        g = got.get(t.name)
        if g is None or g.tensor_type != t.tensor_type or not np.array_equal(g.data, t.data):
            raise PalignError(f"the written GGUF differs from the base in {t.name}; not kept")
    diff = 0.0
    for layer in range(u.shape[0]):
        b = got.get(_BIAS.format(layer))
        if b is None or b.tensor_type != GGMLQuantizationType.F32:
            raise PalignError(f"the written GGUF lacks an F32 {_BIAS.format(layer)}; not kept")
        diff = max(diff, float(np.abs(np.asarray(b.data).reshape(-1) - u[layer]).max()))
    if diff != 0.0:
        raise PalignError(f"the written biases differ from the shift by {diff:.3g}; not kept")
    return {"tensors": len(got), "base_tensors_identical": True, "bias_max_abs_diff": diff}


def export_gguf(
    adapter: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: Any = None,
    alpha: float | None = None,
    device: str = "cpu",
    force: bool = False,
    steer_position: str | None = None,
) -> dict[str, Any]:
    """Write ``adapter``'s person as a GGUF file ``out``: the base GGUF plus attn_output biases.

    Args:
        adapter: a PAS adapter folder (``palign align``).
        out: the ``.gguf`` file to write (must not exist, or be an earlier palign GGUF export).
        model: the base model: a spec (model alias or ``.gguf`` path) or a loaded
            :class:`~palign.models.loading.LoadedModel` of one; default: the adapter's.
        alpha: steering strength (default: the adapter's fitted alpha, as ``palign serve``).
        device: where to load the base model for the adapter's checks.
        force: accept a base model id/revision other than the recorded one.
        steer_position: ``"all"`` acknowledges exporting an adapter fitted at ``"last"``.

    Returns:
        the export record (also stored in the file as the ``palign.export`` key).

    Raises:
        PalignError: no GGUF base model, an architecture whose llama.cpp model ignores the
            bias, a bad adapter, a ``last`` adapter without ``steer_position="all"``, an
            existing ``out`` that is not an earlier export.
    """
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

    from palign.models.loading import LoadedModel, load_model
    from palign.serve.export import (
        _adapter_model_spec,
        _sys_template,
        check_position,
        export_record,
    )
    from palign.steering.adapter import ADAPTER_CONFIG, load_adapter

    if steer_position not in (None, "all"):
        raise PalignError(
            f"--steer-position {steer_position} cannot be exported: an attn_output bias steers "
            "every position; use --steer-position all (or serve the personality with palign "
            "serve)"
        )
    src = Path(adapter)
    dst = Path(out)
    if dst.suffix.lower() != ".gguf":
        raise PalignError(f"--out {dst} must be a .gguf file name for --to gguf")
    if dst.exists() and (not dst.is_file() or not _is_export(dst)):
        raise PalignError(f"{dst} exists and is not an earlier palign export; choose another --out")
    lm = model if isinstance(model, LoadedModel) else None
    spec = lm.spec if lm is not None else model
    if spec is None:
        spec = _adapter_model_spec(src)
        if spec is None:
            raise PalignError(f"{src} is not a palign adapter (no readable {ADAPTER_CONFIG})")
    path = base_gguf(str(spec))
    try:
        reader = GGUFReader(str(path))
    except Exception as err:
        raise PalignError(f"cannot read GGUF file {path}: {str(err).splitlines()[0]}") from None
    arch = _field(reader, "general.architecture")
    if arch in GGUF_REFUSED:
        raise PalignError(
            f"cannot export a {arch} GGUF: {GGUF_REFUSED[arch]}, so llama.cpp would not load or "
            "not apply the personality; serve it with 'palign serve' or export a folder "
            "(--to folder) for vLLM/transformers"
        )
    if arch not in GGUF_EXPORTABLE:
        raise PalignError(
            f"cannot export a {arch} GGUF: palign has not checked that llama.cpp applies an "
            f"attn_output bias for it (exportable: {', '.join(GGUF_EXPORTABLE)}); serve it "
            "with 'palign serve' instead"
        )
    n_layers = int(_field(reader, f"{arch}.block_count"))
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    if lm is None:
        lm = load_model(str(spec), device=device)
    pas = load_adapter(src, lm, force=force)
    fitted = check_position(src, pas, steer_position, what="an attn_output bias")
    u = pas.u_at(alpha).detach().float().cpu().numpy().astype(np.float32)
    if u.shape != (n_layers, hidden):
        raise PalignError(
            f"adapter {src} has steering vectors of shape {tuple(u.shape)}, but {path.name} has "
            f"{n_layers} layers of width {hidden}; align the person on this model"
        )
    tensors = {t.name: t for t in reader.tensors}
    for layer in range(n_layers):
        if _WEIGHT.format(layer) not in tensors:
            raise PalignError(f"{path.name} has no {_WEIGHT.format(layer)}; not a llama GGUF")
        old = tensors.get(_BIAS.format(layer))
        if old is not None:  # a base model with its own o_proj bias: the shift adds to it
            if old.tensor_type != GGMLQuantizationType.F32:
                raise PalignError(f"{path.name} has a non-F32 {old.name}; cannot add the shift")
            u[layer] += np.asarray(old.data, dtype=np.float32).reshape(hidden)
    system_prompt = (pas.config.get("extra") or {}).get("system_prompt")
    template = _sys_template(lm.tokenizer, system_prompt)
    a = float(pas.alpha if alpha is None else alpha)
    record = export_record(
        src,
        pas,
        a,
        fitted,
        system_prompt,
        {"id": lm.model_id, "revision": lm.revision, "gguf": path.name},
        fmt="gguf",
        architecture=arch,
        bias_tensors=n_layers,
        bias_dtype="F32",
    )
    keys: dict[str, Any] = {
        "palign.person": str(record["person"] or ""),
        "palign.alpha": a,
        "palign.steer_position": "all",
        "palign.version": __version__,
        "palign.export": json.dumps(record, ensure_ascii=False),
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        writer = GGUFWriter(str(tmp), arch=str(arch), endianess=reader.endianess)
        align = _field(reader, "general.alignment")
        if align is not None:
            writer.data_alignment = int(align)
        for f in reader.fields.values():
            if f.name == "general.architecture" or f.name.startswith(("GGUF.", "palign.")):
                continue
            vtype = f.types[0]
            sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
            value = f.contents()
            if f.name == "tokenizer.chat_template" and template is not None:
                value = template
            writer.add_key_value(f.name, value, vtype, sub_type=sub)
        if template is not None and "tokenizer.chat_template" not in reader.fields:
            writer.add_key_value("tokenizer.chat_template", template, GGUFValueType.STRING)
        for k, v in keys.items():
            vt = GGUFValueType.FLOAT32 if isinstance(v, float) else GGUFValueType.STRING
            writer.add_key_value(k, v, vt)
        order: list[tuple[str, Any]] = []  # (name, reader tensor or bias row)
        for t in reader.tensors:
            if t.name.endswith(".attn_output.bias"):
                continue  # replaced by the summed bias below
            order.append((t.name, t))
            if t.name.endswith(".attn_output.weight"):
                layer = int(t.name.split(".")[1])
                order.append((_BIAS.format(layer), u[layer]))
        for name, item in order:
            if isinstance(item, np.ndarray):
                writer.add_tensor_info(name, item.shape, item.dtype, item.nbytes)
            else:
                writer.add_tensor_info(
                    name, item.data.shape, item.data.dtype, item.data.nbytes, item.tensor_type
                )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, item in order:
            if isinstance(item, np.ndarray):
                writer.write_tensor_data(item)
            else:
                writer.write_tensor_data(item.data, tensor_endianess=reader.endianess)
        writer.close()
        record["verification"] = _read_back(tmp, reader, u)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    record["out"] = str(dst)
    record["ollama_modelfile"] = ollama_modelfile(dst.name, system_prompt)
    record["bytes"] = dst.stat().st_size
    return record
