"""PAS adapter folders: save -> load round trip, base-model checks, bad folders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

from palign.errors import PalignError
from palign.steering import (
    fit_pas,
    load_adapter,
    resolve_arch,
    save_adapter,
    steer,
)
from palign.steering.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS

pytestmark = pytest.mark.usefixtures("one_thread")


CFG = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _llama(**over: int) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.LlamaForCausalLM(tf.LlamaConfig(**{**CFG, **over})).eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _llama()


@pytest.fixture(scope="module")
def result(model: torch.nn.Module):  # type: ignore[no-untyped-def]
    arch = resolve_arch(model)
    g = torch.Generator().manual_seed(0)
    n_items = 30
    acts = torch.randn(2 * n_items, arch.n_layers, arch.n_heads, arch.head_dim, generator=g)
    answers = np.random.default_rng(0).choice([1, 2, 4, 5], size=n_items).astype(float)
    return fit_pas(acts, answers, arch, alpha=4.0, K=5)


def _save(tmp_path: Path, model: torch.nn.Module, result, **kw) -> Path:  # type: ignore[no-untyped-def]
    args = dict(model_id="tiny/llama", inventory="ipip-neo", semantics="agreement", person="7")
    args.update(kw)
    return save_adapter(tmp_path / "adapter", result, arch=resolve_arch(model), **args)


def _logits(model: torch.nn.Module, u: torch.Tensor | None = None) -> torch.Tensor:
    ids = torch.arange(3, 12).reshape(1, 9)
    with torch.no_grad(), steer(model, u):
        return model(input_ids=ids, use_cache=False).logits


def test_round_trip(tmp_path: Path, model: torch.nn.Module, result) -> None:  # type: ignore[no-untyped-def]
    folder = _save(tmp_path, model, result)
    cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    for key in [
        "format_version",
        "base_model",
        "inventory",
        "semantics",
        "n_layers",
        "n_heads",
        "head_dim",
        "hidden",
        "K",
        "heads",
        "alpha",
        "alpha_selection",
        "validation_errors",
        "seed",
        "palign_version",
        "person",
    ]:
        assert key in cfg
    assert cfg["base_model"] == {"id": "tiny/llama", "revision": None, "model_type": "llama"}
    assert cfg["alpha_selection"] == "fixed" and cfg["person"] == "7"
    assert sorted(p.name for p in folder.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])
    ad = load_adapter(folder, model)
    assert torch.equal(ad.u, result.u.float())
    assert ad.fit.heads == result.fit.heads
    assert torch.equal(ad.fit.directions, result.fit.directions)
    assert ad.alpha == 4.0
    assert torch.equal(_logits(model, ad.u), _logits(model, result.u))
    assert not torch.allclose(_logits(model, ad.u), _logits(model))
    # another alpha without the model, equal to recomputing from the directions
    torch.testing.assert_close(ad.u_at(2.0), result.u_unit * 2.0)
    torch.testing.assert_close(ad.u_at(2.0), ad.recompute_u(2.0, resolve_arch(model)))
    assert torch.equal(ad.u_at(None), ad.u)
    with pytest.raises(PalignError):
        ad.u_at(float("inf"))


def test_validation_errors_round_trip(tmp_path: Path, model: torch.nn.Module, result) -> None:  # type: ignore[no-untyped-def]
    result.validation_errors = {0.0: 1.25, 2.0: 0.75}
    result.alpha_selection = "heldout-kfold"
    try:
        ad = load_adapter(_save(tmp_path, model, result))
    finally:
        result.validation_errors, result.alpha_selection = {}, "fixed"
    assert ad.validation_errors == {0.0: 1.25, 2.0: 0.75}
    assert ad.config["alpha_selection"] == "heldout-kfold"


def test_mismatched_base_model(tmp_path: Path, model: torch.nn.Module, result) -> None:  # type: ignore[no-untyped-def]
    folder = _save(tmp_path, model, result)
    with pytest.raises(PalignError, match="fitted for tiny/llama"):
        load_adapter(folder, _llama(hidden_size=48))
    with pytest.raises(PalignError, match="fitted for"):
        load_adapter(folder, _llama(num_hidden_layers=2))
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4))
    with pytest.raises(PalignError, match="gpt2"):
        load_adapter(folder, gpt2)
    with pytest.raises(PalignError, match="--force"):
        load_adapter(folder, model, model_id="other/model")
    with pytest.warns(UserWarning, match="forced"):
        load_adapter(folder, model, model_id="other/model", force=True)
    # same shapes, other weights: loads, with a warning
    with pytest.warns(UserWarning, match="other weights"):
        torch.manual_seed(1)
        other = tf.LlamaForCausalLM(tf.LlamaConfig(**CFG)).eval()
        for layer in other.model.layers:
            torch.nn.init.normal_(layer.self_attn.o_proj.weight)
        load_adapter(folder, other)


def test_bad_folders(tmp_path: Path, model: torch.nn.Module, result) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PalignError, match="does not exist"):
        load_adapter(tmp_path / "nope")
    folder = _save(tmp_path, model, result)
    cfg_text = (folder / ADAPTER_CONFIG).read_text()
    weights = (folder / ADAPTER_WEIGHTS).read_bytes()

    (folder / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(PalignError, match="missing"):
        load_adapter(folder)
    (folder / ADAPTER_WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(PalignError, match=ADAPTER_WEIGHTS):
        load_adapter(folder)
    (folder / ADAPTER_WEIGHTS).write_bytes(weights)

    (folder / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(PalignError, match="JSON"):
        load_adapter(folder)
    bad = json.loads(cfg_text)
    bad["hidden"] = 33
    (folder / ADAPTER_CONFIG).write_text(json.dumps(bad))
    with pytest.raises(PalignError, match="shape"):
        load_adapter(folder)
    bad = json.loads(cfg_text)
    bad["format_version"] = 99
    (folder / ADAPTER_CONFIG).write_text(json.dumps(bad))
    with pytest.raises(PalignError, match="upgrade"):
        load_adapter(folder)
    bad = json.loads(cfg_text)
    del bad["alpha"]
    (folder / ADAPTER_CONFIG).write_text(json.dumps(bad))
    with pytest.raises(PalignError, match="alpha"):
        load_adapter(folder)
    bad = json.loads(cfg_text)
    bad["alpha"] = 1.0  # u no longer equals alpha * u_unit
    (folder / ADAPTER_CONFIG).write_text(json.dumps(bad))
    with pytest.raises(PalignError, match="u_unit"):
        load_adapter(folder)
    (folder / ADAPTER_CONFIG).write_text(json.dumps({"hello": 1}))
    with pytest.raises(PalignError, match="not a palign PAS adapter"):
        load_adapter(folder)
    (folder / ADAPTER_CONFIG).write_text(cfg_text)
    assert load_adapter(folder).alpha == 4.0


def test_save_checks(tmp_path: Path, model: torch.nn.Module, result) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PalignError, match="sizes"):
        _save(tmp_path, _llama(num_hidden_layers=2), result)
    with pytest.raises(PalignError, match="model_type"):
        save_adapter(tmp_path / "x", result, model_id="m", inventory="sd3", semantics="agreement")
