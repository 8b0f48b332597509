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


def _alone(model: torch.nn.Module, tok, prompts: list[str], **kw) -> torch.Tensor:
    """The plain path: every prompt captured on its own (no stem shared)."""
    return torch.cat([capture_prompts(model, tok, [p], **kw) for p in prompts])


def test_shared_stems_equal_plain_capture(
    model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompts that differ only in their last token (PAS's A/E pairs) run their common stem
    once: the activations equal each prompt captured alone, rows in prompt order."""
    from palign.steering import capture as cap

    calls = []
    real = cap._capture_shared_stems
    monkeypatch.setattr(
        cap, "_capture_shared_stems", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    tok = CharTokenizer()
    stems = ["hello there, A:", "a much longer prompt text here:", "mid size one:"]
    prompts = [s + c for s in stems for c in "AE"] + ["no twin here?"]
    shared = capture_prompts(model, tok, prompts, batch_size=2)
    plain = _alone(model, tok, prompts)
    assert shared.shape == plain.shape
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
    # the A and E rows of one stem differ (the last token is read, not the stem's)
    assert (shared[0] - shared[1]).abs().max() > 1e-3
    assert calls == [1]  # the shared path ran (once), the plain path for the single prompts


@pytest.mark.slow
def test_shared_stems_equal_plain_capture_smollm2() -> None:
    """The same on the embedded SmolLM2 with the real contrastive prompts of PAS."""
    from palign.models.loading import load_model
    from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT, build_prompt, encode_prompt
    from palign.steering.capture import _cache_ok, _stems_shared

    lm = load_model("smollm2")
    st = ["You worry about things.", "You make friends easily.", "You are always busy."]
    prompts = [build_prompt(lm.tokenizer, NEUTRAL_SYSTEM_PROMPT, s, c) for s in st for c in "AE"]
    enc = {"encode": lambda t: encode_prompt(lm.tokenizer, t)}
    ids = [encode_prompt(lm.tokenizer, p) for p in prompts]
    assert _stems_shared(ids) and _cache_ok(lm.model, max(map(len, ids)))  # the shared path
    shared = capture_prompts(lm.model, lm.tokenizer, prompts, batch_size=2, **enc)
    plain = _alone(lm.model, lm.tokenizer, prompts, **enc)
    torch.testing.assert_close(shared, plain, rtol=0, atol=2e-4)
    assert (shared[0] - shared[1]).abs().max() > 1e-2
