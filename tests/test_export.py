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


def test_export_refuses_a_last_position_adapter(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    """An adapter fitted at "last" is not an o_proj bias: refused unless acknowledged."""
    adapter = make_adapter(tiny_lm, tmp_path / "adapter")
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["extra"]["steer_position"] = "last"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PalignError, match="last position"):
        export_adapter(adapter, tmp_path / "model", model=tiny_lm)
    assert not (tmp_path / "model").exists()
    del cfg["extra"]["steer_position"]  # legacy adapters were fitted at "last" too
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PalignError, match="--steer-position all"):
        export_adapter(adapter, tmp_path / "model", model=tiny_lm)
    rec = export_adapter(adapter, tmp_path / "model", model=tiny_lm, steer_position="all")
    saved = json.loads((tmp_path / "model" / EXPORT_RECORD).read_text())
    assert saved["fitted_steer_position"] == "last" and saved["steer_position_acknowledged"]
    assert rec["steer_position"] == "all"
    check_parity(tiny_lm, adapter, tmp_path / "model")


def test_export_answers_like_palign_serve(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    """A chat without a system message: the served personality and the export in plain
    transformers (its own tokenizer and chat template) give the same prompt and greedy text."""
    import openai

    from palign.serve import create_app
    from palign.serve.app import ServeConfig
    from palign.serve.testing import serve_in_thread

    adapter = make_adapter(tiny_lm, tmp_path / "alice")
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["extra"]["system_prompt"] = 'You are Alice: "careful", curious.\nAnswer as yourself.'
    cfg_path.write_text(json.dumps(cfg))
    export_adapter(adapter, tmp_path / "model", model=tiny_lm)
    tok = tf.AutoTokenizer.from_pretrained(tmp_path / "model")
    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    chats = [
        [{"role": "user", "content": "How do you spend a free evening?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
    ]
    app = create_app(tiny_lm, [adapter], ServeConfig(served_model_name="tiny", threads=1))
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        for conv in chats:
            ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            ids = tok(ids, add_special_tokens=False).input_ids
            x = torch.tensor([ids])
            with torch.no_grad():
                out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12,
                                     do_sample=False, eos_token_id=None,
                                     pad_token_id=tok.pad_token_id)  # fmt: skip
            want = tok.decode(out[0, len(ids) :], skip_special_tokens=True)
            r = c.chat.completions.create(
                model="tiny:alice", messages=conv, max_tokens=12, temperature=0
            )
            assert r.usage.prompt_tokens == len(ids)
            assert r.choices[0].message.content == want
    assert "careful" in tok.decode(
        tok(
            tok.apply_chat_template(chats[0], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        ).input_ids
    )


def test_export_refuses_architectures_vllm_drops_the_bias_of(
    tiny_lm: LoadedModel, tmp_path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = tf.Qwen3Config(
            vocab_size=len(tiny_lm.tokenizer), hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            max_position_embeddings=512, pad_token_id=tiny_lm.tokenizer.pad_token_id,
        )  # fmt: skip
        model = tf.Qwen3ForCausalLM(cfg).eval()
    lm = LoadedModel(model, tiny_lm.tokenizer, "tiny-qwen3", "tiny-qwen3", None,
                     torch.device("cpu"), torch.float32)  # fmt: skip
    adapter = make_adapter(lm, tmp_path / "adapter")
    with pytest.raises(PalignError, match="vllm/model_executor/models/qwen3.py"):
        export_adapter(adapter, tmp_path / "model", model=lm)
    assert not (tmp_path / "model").exists()


def test_export_dtype_and_v4_keys(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    """Default dtype: the base model's own (here a bfloat16 folder), not float32; config and
    tokenizer config carry the keys transformers 4.x reads."""
    import copy

    from palign.models.loading import load_model
    from palign.serve.export import native_dtype

    folder = tmp_path / "base-bf16"
    copy.deepcopy(tiny_lm.model).to(torch.bfloat16).save_pretrained(folder)
    tiny_lm.tokenizer.save_pretrained(folder)
    lm32 = load_model(str(folder), dtype="float32")
    adapter = make_adapter(lm32, tmp_path / "adapter")
    out = tmp_path / "model"
    assert main(["export", "--adapter", str(adapter), "--out", str(out), "--model",
                 str(folder), "--format", "json"]) == 0  # fmt: skip
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16" and cfg["rope_theta"] == 10000.0
    assert json.loads((out / EXPORT_RECORD).read_text())["dtype"] == "bfloat16"
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast" and "chat_template" in tc
    assert main(["export", "--adapter", str(adapter), "--out", str(out), "--model",
                 str(folder), "--dtype", "float32"]) == 0  # fmt: skip
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    # a quantised GGUF (the embedded SmolLM2 is Q4_1) has no original dtype: bfloat16
    dt, why = native_dtype("smollm2")
    assert dt == torch.bfloat16 and "quantised" in why


def test_system_prompt_template_matches_chat_ids(tiny_lm: LoadedModel) -> None:
    """Templates with and without a system role: the exported template renders a chat without
    a system message exactly as palign serve builds it (:func:`palign.chat.chat_ids`)."""
    import copy

    from palign.serve.export import _sys_template

    no_sys = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system role') }}{% endif %}"
        "<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    system = "Be 'Alice' \\ \"quoted\"\nalways."
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
            {"role": "user", "content": "More"}]  # fmt: skip
    for tmpl in (tiny_lm.tokenizer.chat_template, no_sys):
        tok = copy.deepcopy(tiny_lm.tokenizer)
        tok.chat_template = tmpl
        lm = LoadedModel(tiny_lm.model, tok, "t", "t", None, torch.device("cpu"), torch.float32)
        want = chat_ids(lm, [{"role": "system", "content": system}] + conv)
        tok2 = copy.deepcopy(tok)
        tok2.chat_template = _sys_template(tok, system)
        text = tok2.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert tok2(text, add_special_tokens=False).input_ids == want
        if tmpl != no_sys:  # a chat with its own system message is left alone
            own = [{"role": "system", "content": "Other."}] + conv
            got = tok2.apply_chat_template(own, tokenize=False)
            assert got == tok.apply_chat_template(own, tokenize=False)
