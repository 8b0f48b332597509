"""capture_prompts (left padding, order) and the on-disk activation cache."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import transformers as tf

from palign.errors import PalignError
from palign.steering import (
    activations_cache_dir,
    cache_key,
    cached_activations,
    capture_prompts,
    resolve_arch,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class CharTokenizer:
    """Minimal stand-in for a HF tokenizer: one id per character (no downloads)."""

    pad_token_id = 0
    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids = [3 + (ord(c) % 60) for c in text]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.LlamaForCausalLM(cfg).eval()


def test_capture_prompts_left_padding_and_order(model: torch.nn.Module) -> None:
    prompts = ["You worry about things. A", "Hi E", "A much longer statement here. E", "x"]
    tok = CharTokenizer()
    acts = capture_prompts(model, tok, prompts, batch_size=3)
    arch = resolve_arch(model)
    assert acts.shape == (4, 2, 4, arch.head_dim)
    for i, p in enumerate(prompts):
        alone = capture_prompts(model, tok, [p], batch_size=1)
        torch.testing.assert_close(acts[i : i + 1], alone, rtol=1e-4, atol=1e-4)
    with_bos = capture_prompts(model, tok, prompts[:1], add_special_tokens=True)
    assert not torch.allclose(with_bos, acts[:1])
    via_encode = capture_prompts(model, None, prompts, encode=lambda t: tok(t)["input_ids"])
    torch.testing.assert_close(via_encode, acts)
    with pytest.raises(PalignError):
        capture_prompts(model, tok, [""])
    with pytest.raises(PalignError):
        capture_prompts(model, tok, prompts, batch_size=0)


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "pc"))
    assert activations_cache_dir() == tmp_path / "pc" / "activations"
    monkeypatch.delenv("PALIGN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert activations_cache_dir() == tmp_path / "xdg" / "palign" / "activations"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert activations_cache_dir() == tmp_path / "home" / ".cache" / "palign" / "activations"


def test_cached_activations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path))
    calls: list[int] = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2)

    key = {"model": "m", "revision": None, "template": "abc", "items": ["1", "2"]}
    a = cached_activations(key, compute)
    b = cached_activations(dict(reversed(list(key.items()))), compute)  # key order irrelevant
    assert len(calls) == 1 and torch.equal(a, b)
    folder = tmp_path / "activations"
    h = cache_key(key)
    assert (folder / f"{h}.safetensors").is_file()
    meta = json.loads((folder / f"{h}.json").read_text())
    assert meta["key_fields"] == key and meta["shape"] == [2, 3, 2, 2]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    cached_activations({**key, "items": ["1", "3"]}, compute)
    assert len(calls) == 2
    # a corrupt entry is recomputed (with a warning) and rewritten
    (folder / f"{h}.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        c = cached_activations(key, compute)
    assert len(calls) == 3 and torch.equal(c, a)
    assert torch.equal(cached_activations(key, compute), a) and len(calls) == 3
    # explicit folder
    cached_activations(key, compute, cache_dir=tmp_path / "other")
    assert (tmp_path / "other" / f"{h}.json").is_file()
    with pytest.raises(PalignError):
        cached_activations({"x": object()}, compute)


def test_capture_without_position_ids_is_exact_and_says_why(model: torch.nn.Module) -> None:
    """A forward without ``position_ids`` gets no padded batches (left padding would shift
    positions): each prompt equals its capture alone, and a warning names the reason."""

    class NoPositions(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, input_ids, attention_mask=None, **kw):  # no position_ids
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw)

    wrapped = NoPositions(model)
    prompts = ["You worry about things. A", "Hi E", "Hi A", "A much longer statement. E"]
    tok = CharTokenizer()
    arch = resolve_arch(model)
    with pytest.warns(UserWarning, match="position_ids"):
        acts = capture_prompts(wrapped, tok, prompts, batch_size=4, arch=arch)
    for i, p in enumerate(prompts):
        alone = capture_prompts(model, tok, [p], batch_size=1)
        torch.testing.assert_close(acts[i : i + 1], alone, rtol=1e-5, atol=1e-5)
