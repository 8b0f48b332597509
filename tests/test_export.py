"""palign export: one person as a plain Hugging Face model folder (o_proj bias = u).

The parity check is independent of export's own verification: the folder is loaded here with
stock ``AutoModelForCausalLM`` and compared with the base model under
:func:`palign.steering.steer` (position "all") on several prompts, padded batches included.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

from palign.chat import chat_ids
from palign.cli import main
from palign.errors import PalignError
from palign.models.loading import LoadedModel
from palign.serve.export import EXPORT_RECORD, export_adapter
from palign.steering import fit_pas, load_adapter, resolve_arch, save_adapter, steer

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Hi!", "How do you spend a free evening?", "Tell me what annoys you most, honestly."]


def make_adapter(lm: LoadedModel, folder: Path, seed: int = 3, alpha: float = 2.0) -> Path:
    arch = resolve_arch(lm.model)
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(60, arch.n_layers, arch.n_heads, arch.head_dim, generator=g)
    answers = np.random.default_rng(seed).choice([1, 2, 4, 5], size=30).astype(float)
    res = fit_pas(acts, answers, arch, alpha=alpha, K=4)
    return save_adapter(
        folder,
        res,
        model_id=lm.model_id,
        arch=arch,
        inventory="ipip-neo",
        semantics="agreement",
        person="p-7",
        extra={"model_spec": lm.spec, "steer_position": "all"},
    )


def _padded_logits(model: torch.nn.Module, seqs: list[list[int]], pad: int) -> torch.Tensor:
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def check_parity(lm: LoadedModel, adapter: Path, out: Path, alpha: float | None = None) -> float:
    exported = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    assert all(
        exported.get_parameter(f"model.layers.{i}.self_attn.o_proj.bias") is not None
        for i in range(lm.model.config.num_hidden_layers)
    )
    u = load_adapter(adapter, lm).u_at(alpha)
    seqs = [chat_ids(lm, [{"role": "user", "content": p}]) for p in PROMPTS]
    pad = lm.tokenizer.pad_token_id
    got = _padded_logits(exported, seqs, pad)
    with steer(lm.model, u, position="all"):
        want = _padded_logits(lm.model, seqs, pad)
    plain = _padded_logits(lm.model, seqs, pad)
    for b, s in enumerate(seqs):  # real positions only (padding differs by definition)
        real = slice(got.shape[1] - len(s), None)
        torch.testing.assert_close(got[b, real], want[b, real], atol=1e-4, rtol=1e-4)
        assert (got[b, real] - plain[b, real]).abs().max() > 1e-3  # the person is in there
    return float((got - want).abs().max())


def test_export_llama_parity(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_lm, tmp_path / "adapter")
    rec = export_adapter(adapter, tmp_path / "model", model=tiny_lm)
    out = tmp_path / "model"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["attention_bias"] is True and cfg["model_type"] == "llama"
    assert rec["verification"]["max_abs_logit_diff"] <= rec["verification"]["tolerance"]
    assert json.loads((out / EXPORT_RECORD).read_text())["person"] == "p-7"
    check_parity(tiny_lm, adapter, out)
    # the base model is left as it was
    assert all(m.bias is None for m in resolve_arch(tiny_lm.model).modules)
    # another alpha; re-export over an earlier export is allowed, over other folders not
    export_adapter(adapter, out, model=tiny_lm, alpha=0.5)
    check_parity(tiny_lm, adapter, out, alpha=0.5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("keep me")
    with pytest.raises(PalignError, match="not an earlier palign export"):
        export_adapter(adapter, tmp_path / "other", model=tiny_lm)


def test_export_qwen2_as_llama(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = tf.Qwen2Config(
            vocab_size=len(tiny_lm.tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tiny_lm.tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        model = tf.Qwen2ForCausalLM(cfg).eval()
    for layer in model.model.layers:  # non-zero q/k/v biases must survive the conversion
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            torch.nn.init.normal_(lin.bias, std=0.5)
    lm = LoadedModel(
        model,
        tiny_lm.tokenizer,
        "tiny-qwen2",
        "tiny-qwen2",
        None,
        torch.device("cpu"),
        torch.float32,
    )
    adapter = make_adapter(lm, tmp_path / "adapter")
    export_adapter(adapter, tmp_path / "model", model=lm)
    cfg_out = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg_out["model_type"] == "llama" and cfg_out["architectures"] == ["LlamaForCausalLM"]
    check_parity(lm, adapter, tmp_path / "model")


def test_export_cli(tiny_folder: Path, tiny_lm: LoadedModel, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from palign.models.loading import load_model

    lm = load_model(str(tiny_folder))
    adapter = make_adapter(lm, tmp_path / "adapter")
    out = tmp_path / "model"
    assert main(["export", "--adapter", str(adapter), "--out", str(out), "--format", "json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["out"] == str(out) and rec["verification"]["same_argmax"] is True
    check_parity(lm, adapter, out)
    assert main(["export", "--adapter", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "palign: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_export_smollm2_parity(tmp_path: Path) -> None:
    from palign.models.loading import load_model

    lm = load_model("smollm2")
    adapter = make_adapter(lm, tmp_path / "adapter", alpha=4.0)
    export_adapter(adapter, tmp_path / "model", model=lm)
    assert check_parity(lm, adapter, tmp_path / "model") < 1e-3
