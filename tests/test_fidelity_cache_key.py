"""The activation-cache key identifies the weights: fingerprint of the weight files, 4-bit
quantisation and dtype (a local folder has no revision)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import torch

from palign.data.types import Dataset
from palign.errors import PalignError
from palign.models.loading import LoadedModel, load_model, weights_fingerprint
from palign.steering.capture import cache_key, model_key_fields


@pytest.fixture
def model_copy(tmp_path: Path, tiny_folder: Path) -> Path:
    """A private copy of the tiny model folder (the tests touch its files)."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_folder, dst)
    return dst


def _touch(path: Path, seconds: float = 5.0) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


def test_fingerprint_changes_when_a_weights_file_is_touched_or_rewritten(model_copy: Path) -> None:
    weights = next(model_copy.glob("*.safetensors"))
    before = weights_fingerprint(model_copy)
    assert weights_fingerprint(model_copy) == before  # stable
    _touch(weights)
    touched = weights_fingerprint(model_copy)
    assert touched != before
    data = weights.read_bytes()  # retrained weights of the same size, same path
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    _touch(weights, 10.0)  # a different mtime even on coarse-clock file systems
    assert weights_fingerprint(model_copy) not in (before, touched)
    # the config counts too; files outside the patterns (e.g. a README) do not
    now = weights_fingerprint(model_copy)
    (model_copy / "README.md").write_text("notes")
    assert weights_fingerprint(model_copy) == now
    _touch(model_copy / "config.json")
    assert weights_fingerprint(model_copy) != now
    with pytest.raises(PalignError, match="no such file"):
        weights_fingerprint(model_copy / "missing")


def test_a_gguf_file_is_fingerprinted_itself(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(16))
    a = weights_fingerprint(f)
    _touch(f)
    assert weights_fingerprint(f) != a


def test_loaded_folder_key_changes_with_its_weights(model_copy: Path) -> None:
    lm1 = load_model(str(model_copy), device="cpu")
    assert lm1.revision is None  # why the fingerprint is needed
    assert lm1.weights_fingerprint == weights_fingerprint(model_copy)
    assert lm1.load_in_4bit is False
    k1 = cache_key(model_key_fields(lm1))
    assert cache_key(model_key_fields(load_model(str(model_copy), device="cpu"))) == k1
    _touch(next(model_copy.glob("*.safetensors")))
    lm2 = load_model(str(model_copy), device="cpu")
    assert lm2.model_id == lm1.model_id and lm2.revision == lm1.revision
    assert cache_key(model_key_fields(lm2)) != k1


def test_quantisation_and_dtype_change_the_key(tiny_lm: LoadedModel) -> None:
    base = dataclasses.replace(tiny_lm, weights_fingerprint="f" * 64)
    k = cache_key(model_key_fields(base))
    assert cache_key(model_key_fields(dataclasses.replace(base, load_in_4bit=True))) != k
    assert cache_key(model_key_fields(dataclasses.replace(base, dtype=torch.bfloat16))) != k
    assert cache_key(model_key_fields(dataclasses.replace(base, weights_fingerprint="0"))) != k
    fields = model_key_fields(dataclasses.replace(base, load_in_4bit=True))
    assert fields["load_in_4bit"] is True and fields["weights_fingerprint"] == "f" * 64


def test_pas_activation_cache_is_not_reused_for_retrained_weights(
    model_copy: Path, tiny: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: PAS's on-disk activation cache hits for the same weights and misses (a new
    entry, fresh activations) after the weights file at the same path changed."""
    from palign.methods.pas import shown_activations
    from palign.steering.arch import resolve_arch

    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    entries = lambda: sorted((tmp_path / "cache" / "activations").glob("*.safetensors"))  # noqa: E731
    lm = load_model(str(model_copy), device="cpu")
    arch = resolve_arch(lm.model)
    a1 = shown_activations(lm, tiny, arch, progress=False)
    assert len(entries()) == 1
    shown_activations(lm, tiny, arch, progress=False)
    assert len(entries()) == 1  # same weights: a cache hit
    # "retrain": other weights, saved at the same path
    torch.manual_seed(7)
    for p in lm.model.parameters():
        p.data.add_(0.5 * torch.randn_like(p))
    lm.model.save_pretrained(model_copy)
    lm2 = load_model(str(model_copy), device="cpu")
    a2 = shown_activations(lm2, tiny, resolve_arch(lm2.model), progress=False)
    assert len(entries()) == 2
    assert not torch.allclose(a1, a2)
