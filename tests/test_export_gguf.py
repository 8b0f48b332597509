"""palign export --to gguf: the base GGUF plus blk.N.attn_output.bias = the person's shift.

The file is read back here with gguf-py's own ``GGUFReader`` and compared with the base GGUF
(every tensor byte for byte, every metadata key) and with the adapter's ``u`` (exact, per
layer). With llama-cpp-python installed, the export is also run in llama.cpp and compared
with palign's steered model (skipped without it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from palign.cli import main
from palign.errors import PalignError
from palign.models.loading import LoadedModel, alias_gguf
from palign.serve.export_gguf import export_gguf, read_gguf_export
from palign.steering import load_adapter
from tests.test_export import make_adapter

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    from palign.models.loading import load_model

    return load_model("smollm2")


def _fields(reader) -> dict:  # type: ignore[no-untyped-def]
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.slow
def test_gguf_export_copies_the_base_and_adds_the_shift(
    smollm2: LoadedModel, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    from gguf import GGMLQuantizationType, GGUFReader

    adapter = make_adapter(smollm2, tmp_path / "adapter", alpha=4.0)
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["extra"]["system_prompt"] = "You are p-7: calm and curious."
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "p7.gguf"  # the CLI: --to gguf implied by the file name
    assert main(["export", "--adapter", str(adapter), "--out", str(out), "--format", "json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["out"] == str(out) and rec["format"] == "gguf" and rec["architecture"] == "llama"
    base = GGUFReader(str(alias_gguf("smollm2")))
    got = GGUFReader(str(out))
    u = load_adapter(adapter, smollm2).u_at(None).float().numpy()
    n_layers = smollm2.model.config.num_hidden_layers
    # every base tensor: same name, type, shape and bytes
    by_name = {t.name: t for t in got.tensors}
    for t in base.tensors:
        g = by_name.pop(t.name)
        assert g.tensor_type == t.tensor_type and list(g.shape) == list(t.shape)
        assert g.data.tobytes() == t.data.tobytes(), t.name
    # and exactly one F32 bias per layer, equal to that layer's shift
    assert sorted(by_name) == sorted(f"blk.{i}.attn_output.bias" for i in range(n_layers))
    for i in range(n_layers):
        b = by_name[f"blk.{i}.attn_output.bias"]
        assert b.tensor_type == GGMLQuantizationType.F32
        assert np.array_equal(np.asarray(b.data).reshape(-1), u[i])
    assert np.abs(u).max() > 0  # a real shift, not zeros
    # metadata: the base's keys unchanged except the chat template (the system prompt as the
    # default system turn), plus the palign keys naming the person and alpha
    fb, fg = _fields(base), _fields(got)
    for k, v in fb.items():
        if k != "tokenizer.chat_template":
            assert fg[k] == v, k
    tmpl = fg["tokenizer.chat_template"]
    assert tmpl.endswith(fb["tokenizer.chat_template"]) and "calm and curious" in tmpl
    assert fg["palign.person"] == "p-7" and fg["palign.alpha"] == pytest.approx(4.0)
    assert read_gguf_export(out)["person"] == "p-7" == rec["person"]
    assert rec["verification"]["bias_max_abs_diff"] == 0.0
    modelfile = rec["ollama_modelfile"].splitlines()
    assert modelfile[0] == "FROM ./p7.gguf"
    assert modelfile[-1] == 'SYSTEM """You are p-7: calm and curious."""'
    # another alpha over an earlier export is allowed; over another file not
    export_gguf(adapter, out, model=smollm2, alpha=1.0)
    b0 = next(t for t in GGUFReader(str(out)).tensors if t.name == "blk.0.attn_output.bias")
    want = load_adapter(adapter, smollm2).u_at(1.0).float().numpy()[0]
    assert np.array_equal(np.asarray(b0.data).reshape(-1), want)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"not mine")
    with pytest.raises(PalignError, match="not an earlier palign export"):
        export_gguf(adapter, other, model=smollm2)
    assert other.read_bytes() == b"not mine"
    # an adapter fitted at the last position: refused unless acknowledged
    cfg["extra"]["steer_position"] = "last"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PalignError, match="--steer-position all"):
        export_gguf(adapter, tmp_path / "last.gguf", model=smollm2)
    assert not (tmp_path / "last.gguf").exists()
    rec = export_gguf(adapter, tmp_path / "last.gguf", model=smollm2, steer_position="all")
    assert rec["fitted_steer_position"] == "last" and rec["steer_position_acknowledged"]


@pytest.mark.parametrize(
    ("alias", "reason"),
    [("qwen2.5-coder-0.5b", "src/models/qwen2.cpp"), ("gemma3-270m", "src/models/gemma3.cpp")],
)
def test_gguf_export_refuses_architectures_llama_cpp_ignores_the_bias_of(
    alias: str, reason: str, tiny_lm: LoadedModel, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    try:
        alias_gguf(alias)
    except PalignError as e:
        pytest.skip(f"{alias} weights not installed: {e}")
    adapter = make_adapter(tiny_lm, tmp_path / "adapter")
    out = tmp_path / "x.gguf"
    with pytest.raises(PalignError, match=reason):
        export_gguf(adapter, out, model=alias)
    assert not out.exists()
    argv = ["export", "--adapter", str(adapter), "--out", str(out), "--model", alias]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("palign: error: cannot export a ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_gguf_export_refuses_a_model_without_gguf(
    tiny_folder: Path, tiny_lm: LoadedModel, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    adapter = make_adapter(tiny_lm, tmp_path / "adapter")
    with pytest.raises(PalignError, match="convert_hf_to_gguf.py"):
        export_gguf(adapter, tmp_path / "x.gguf", model=str(tiny_folder))
    with pytest.raises(PalignError, match=r"must be a \.gguf file"):
        export_gguf(adapter, tmp_path / "x", model="smollm2")
    # the CLI: --to gguf with a folder model, and --dtype (the GGUF's tensors are copied)
    argv = ["export", "--adapter", str(adapter), "--out", str(tmp_path / "y.gguf")]
    assert main([*argv, "--model", str(tiny_folder)]) == 2
    assert "needs a GGUF base model" in capsys.readouterr().err
    assert main([*argv, "--dtype", "float16"]) == 2
    assert "does not apply to --to gguf" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()


# --- llama.cpp (llama-cpp-python) ---------------------------------------------------------
def _palign_greedy(lm: LoadedModel, ids: list[int], u: torch.Tensor | None, n: int) -> list[int]:
    from palign.steering import steer

    x = torch.tensor([ids])
    with torch.no_grad():
        if u is None:
            out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                    do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)  # fmt: skip
        else:
            with steer(lm.model, u, position="all"):
                out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                        do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)  # fmt: skip
    return out[0, len(ids) :].tolist()


def _prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@pytest.mark.slow
def test_gguf_export_runs_in_llama_cpp_like_palign(smollm2: LoadedModel, tmp_path: Path) -> None:
    """llama.cpp applies the bias: its last-position logits are far closer to palign's steered
    model than to the unsteered one, and its greedy text follows the steered model."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from palign.chat import chat_ids
    from palign.steering import steer

    adapter = make_adapter(smollm2, tmp_path / "adapter", alpha=8.0)
    out = tmp_path / "p.gguf"
    export_gguf(adapter, out, model=smollm2)
    u = load_adapter(adapter, smollm2).u_at(None)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=512, n_threads=1, logits_all=True,
                          verbose=False, seed=0)  # fmt: skip
    prompts = ["How do you spend a free evening?", "What makes a good friend?"]
    steered_prefix = plain_prefix = 0
    for p in prompts:
        ids = chat_ids(smollm2, [{"role": "user", "content": p}])
        llm.reset()
        llm.eval(ids)
        got = torch.tensor(np.asarray(llm.scores[len(ids) - 1]), dtype=torch.float32)
        x = torch.tensor([ids])
        with torch.no_grad():
            plain = smollm2.model(input_ids=x).logits[0, -1].float()
            with steer(smollm2.model, u, position="all"):
                want = smollm2.model(input_ids=x).logits[0, -1].float()
        d_steered = float((got - want).abs().max())
        d_plain = float((got - plain).abs().max())
        assert d_steered < d_plain / 4, (p, d_steered, d_plain)
        toks = []
        llm.reset()
        for t in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            if t == llm.token_eos() or len(toks) >= 16:
                break
            toks.append(t)
        steered_prefix += _prefix(toks, _palign_greedy(smollm2, ids, u, 16))
        plain_prefix += _prefix(toks, _palign_greedy(smollm2, ids, None, 16))
    assert steered_prefix > plain_prefix
