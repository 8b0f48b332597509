"""Architecture table, capture and steering hooks on tiny random models of every family."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as tf

from palign.errors import PalignError
from palign.steering import (
    ARCH_TABLE,
    Steerer,
    capture_head_activations,
    resolve_arch,
    steer,
    steer_heads,
)

pytestmark = pytest.mark.usefixtures("one_thread")


H, KV, HIDDEN, LAYERS = 4, 2, 32, 2
COMMON = dict(
    vocab_size=64,
    hidden_size=HIDDEN,
    intermediate_size=48,
    num_hidden_layers=LAYERS,
    num_attention_heads=H,
    num_key_value_heads=KV,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# model_type -> (builder, expected head_dim); GQA (4 query heads, 2 kv heads) where supported,
# head_dim != hidden / heads where the architecture allows it.
CASES = {
    "llama": (lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**COMMON)), 8),
    "mistral": (lambda: tf.MistralForCausalLM(tf.MistralConfig(**COMMON)), 8),
    "mixtral": (
        lambda: tf.MixtralForCausalLM(
            tf.MixtralConfig(**COMMON, num_local_experts=2, num_experts_per_tok=1)
        ),
        8,
    ),
    "qwen2": (lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**COMMON)), 8),
    "qwen3": (lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**COMMON, head_dim=12)), 12),
    "gemma": (lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**COMMON, head_dim=8)), 8),
    "gemma2": (lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(**COMMON, head_dim=16)), 16),
    "gemma3_text": (
        lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**COMMON, head_dim=16)),
        16,
    ),
    "gemma3": (
        lambda: tf.Gemma3ForConditionalGeneration(
            tf.Gemma3Config(
                text_config=dict(COMMON, head_dim=16),
                vision_config=dict(
                    hidden_size=16,
                    intermediate_size=16,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    image_size=16,
                    patch_size=8,
                ),
                mm_tokens_per_image=4,
            )
        ),
        16,
    ),
    "phi3": (lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**COMMON)), 8),
    "smollm3": (lambda: tf.SmolLM3ForCausalLM(tf.SmolLM3Config(**COMMON)), 8),
    "olmo2": (lambda: tf.Olmo2ForCausalLM(tf.Olmo2Config(**COMMON)), 8),
    "granite": (lambda: tf.GraniteForCausalLM(tf.GraniteConfig(**COMMON)), 8),
    "gpt2": (
        lambda: tf.GPT2LMHeadModel(
            tf.GPT2Config(
                vocab_size=64,
                n_embd=HIDDEN,
                n_layer=LAYERS,
                n_head=H,
                n_positions=128,
                bos_token_id=1,
                eos_token_id=2,
            )
        ),
        8,
    ),
}

_MODELS: dict[str, torch.nn.Module] = {}


def tiny(model_type: str) -> torch.nn.Module:
    """A tiny random model of ``model_type`` (cached per session), eval mode, fp32."""
    if model_type not in _MODELS:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = CASES[model_type][0]().eval()
        _MODELS[model_type] = m
    return _MODELS[model_type]


def _inputs(batch: int = 3, seq: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 64, (batch, seq), generator=g)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def _same(a: torch.Tensor, b: torch.Tensor, exact: bool) -> None:
    if exact:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_table_covers_required_families() -> None:
    for mt in [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3",
        "gemma3_text",
        "phi3",
        "gpt2",
    ]:
        assert mt in ARCH_TABLE
    assert set(ARCH_TABLE) <= set(CASES), "every table entry has a tiny-model test"


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_resolve_arch(model_type: str) -> None:
    model = tiny(model_type)
    arch = resolve_arch(model)
    head_dim = CASES[model_type][1]
    assert arch.model_type == model_type
    assert (arch.n_layers, arch.n_heads, arch.head_dim, arch.hidden) == (
        LAYERS,
        H,
        head_dim,
        HIDDEN,
    )
    assert len(arch.modules) == LAYERS
    W = arch.w_o(1)
    assert W.shape == (HIDDEN, H * head_dim)
    # W_o really is the map o_proj applies: out = W x (+ bias)
    x = torch.randn(5, H * head_dim)
    mod = arch.modules[1]
    with torch.no_grad():
        bias = getattr(mod, "bias", None)
        ref = mod(x) - (bias if bias is not None else 0)
    torch.testing.assert_close(x @ W.T, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_capture_shape_and_rows(model_type: str) -> None:
    model = tiny(model_type)
    arch = resolve_arch(model)
    ids = _inputs()
    acts = capture_head_activations(model, [ids[:2], ids[2:]], arch=arch)
    assert acts.shape == (3, LAYERS, H, arch.head_dim)
    assert acts.dtype == torch.float32
    alone = capture_head_activations(model, [ids[1:2]], arch=arch)
    torch.testing.assert_close(acts[1:2], alone, rtol=1e-4, atol=1e-4)
    # explicit positions
    at2 = capture_head_activations(model, [ids], arch=arch, positions=[[2, 2, 2]])
    ref = capture_head_activations(model, [ids[:, :3]], arch=arch)
    torch.testing.assert_close(at2, ref, rtol=1e-4, atol=1e-4)
    assert _no_hooks(model)


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_steer_mixed_batch_equivalence_and_no_trace(model_type: str) -> None:
    model = tiny(model_type)
    arch = resolve_arch(model)
    ids = _inputs()
    before = _logits(model, ids)
    g = torch.Generator().manual_seed(2)
    u = torch.zeros(3, LAYERS, HIDDEN)
    u[1] = torch.randn(LAYERS, HIDDEN, generator=g) * 3
    u[2, 1] = torch.randn(HIDDEN, generator=g) * 3  # layer 0 zero for this row
    with steer(model, u, arch=arch):
        out = _logits(model, ids)
    # untouched row: bit-identical to the unsteered batch (MoE: routing regroups the
    # other rows' tokens per expert, so only up to rounding)
    _same(out[0], before[0], exact=model_type != "mixtral")
    # steered rows: change, only at the last position, and equal the row run alone
    assert not torch.allclose(out[1, -1], before[1, -1])
    torch.testing.assert_close(out[1, :-1], before[1, :-1], rtol=1e-5, atol=1e-5)
    for b in (1, 2):
        with steer(model, u[b : b + 1], arch=arch):
            alone = _logits(model, ids[b : b + 1])
        torch.testing.assert_close(out[b : b + 1], alone, rtol=1e-4, atol=1e-4)
    # all positions
    with steer(model, u, position="all", arch=arch):
        out_all = _logits(model, ids)
    assert not torch.allclose(out_all[1, 0], before[1, 0])
    _same(out_all[0], before[0], exact=model_type != "mixtral")
    # no trace
    assert _no_hooks(model)
    assert torch.equal(_logits(model, ids), before)


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_all_positions_equal_o_proj_bias(model_type: str) -> None:
    """``position="all"`` equals the original's mechanism: ``u_l`` as the o_proj bias of a
    stock copy of the model (an independent re-statement, no hooks)."""
    import copy

    model = tiny(model_type)
    arch = resolve_arch(model)
    ids = _inputs(batch=1)
    g = torch.Generator().manual_seed(7)
    u = torch.randn(LAYERS, HIDDEN, generator=g) * 2
    with steer(model, u, position="all", arch=arch):
        hooked = _logits(model, ids)
    biased = copy.deepcopy(model)
    for layer, mod in enumerate(resolve_arch(biased).modules):
        if mod.bias is None:
            mod.bias = torch.nn.Parameter(u[layer].clone())
        else:
            mod.bias.data += u[layer]
    torch.testing.assert_close(hooked, _logits(biased, ids), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hooked, _logits(model, ids))


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_head_shift_equals_layer_vector(model_type: str) -> None:
    model = tiny(model_type)
    arch = resolve_arch(model)
    ids = _inputs()
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(3, LAYERS, H, arch.head_dim, generator=g)
    delta[0] = 0
    delta[2, :, 1:] = 0  # only head 0 for this row
    u = torch.stack(
        [
            torch.stack([arch.w_o(layer) @ delta[b, layer].flatten() for layer in range(LAYERS)])
            for b in range(3)
        ]
    )
    for position in ("last", "all"):
        with steer_heads(model, delta, position=position, arch=arch):
            via_input = _logits(model, ids)
        with steer(model, u, position=position, arch=arch):
            via_output = _logits(model, ids)
        torch.testing.assert_close(via_input, via_output, rtol=1e-4, atol=1e-4)
    assert _no_hooks(model)


def test_zero_layers_get_no_hook_and_exception_cleans_up() -> None:
    model = tiny("llama")
    u = torch.zeros(1, LAYERS, HIDDEN)
    u[0, 1, 0] = 1.0
    arch = resolve_arch(model)
    with steer(model, u, arch=arch):
        assert not arch.modules[0]._forward_hooks
        assert len(arch.modules[1]._forward_hooks) == 1
    with pytest.raises(RuntimeError, match="boom"), steer(model, u, arch=arch):
        raise RuntimeError("boom")
    assert _no_hooks(model)


def test_batch_size_mismatch_is_clear() -> None:
    model = tiny("llama")
    u = torch.ones(2, LAYERS, HIDDEN)
    with pytest.raises(PalignError, match="batch size 3"), steer(model, u):
        _logits(model, _inputs(batch=3))
    assert _no_hooks(model)
    # one row broadcasts to any batch
    with steer(model, u[:1]):
        out = _logits(model, _inputs(batch=3))
    assert out.shape[0] == 3


def test_bad_shapes_and_values() -> None:
    model = tiny("llama")
    with (
        pytest.raises(PalignError, match="n_layers, hidden"),
        steer(model, torch.ones(1, 3, HIDDEN)),
    ):
        pass
    with (
        pytest.raises(PalignError, match="NaN"),
        steer(model, torch.full((LAYERS, HIDDEN), float("nan"))),
    ):
        pass
    with pytest.raises(PalignError, match="position"), steer(model, None, position="first"):  # type: ignore[arg-type]
        pass
    assert _no_hooks(model)


def test_dtype_cast() -> None:
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**COMMON)).eval().to(torch.bfloat16)
    u = torch.randn(1, LAYERS, HIDDEN, dtype=torch.float64)
    with steer(model, u):
        out = model(input_ids=_inputs(batch=1), use_cache=False).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_steerer_attach_set_detach_and_generation() -> None:
    model = tiny("llama")
    ids = _inputs(batch=2)
    before = _logits(model, ids)
    s = Steerer(model)
    s.attach()
    assert _no_hooks(model)  # nothing to add yet
    calls: list[int] = []
    arch = s.arch
    counter = arch.modules[0].register_forward_hook(lambda m, a, o: calls.append(o.shape[1]))
    u = torch.randn(2, LAYERS, HIDDEN) * 3
    s.set(u)
    assert len(arch.modules[0]._forward_hooks) == 2
    with torch.no_grad():
        gen = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
        )
    assert gen.shape == (2, ids.shape[1] + 3)
    assert calls[0] == ids.shape[1] and calls[1:] == [1, 1]  # prompt forward + cached steps
    steered = _logits(model, ids)
    assert not torch.allclose(steered, before)
    s.set(None)
    assert torch.equal(_logits(model, ids), before)
    s.set(u)
    s.detach()
    counter.remove()
    assert _no_hooks(model)
    assert torch.equal(_logits(model, ids), before)


def test_unsupported_architecture_names_the_path() -> None:
    cfg = tf.GPTNeoXConfig(
        vocab_size=64,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=H,
        intermediate_size=48,
    )
    model = tf.GPTNeoXForCausalLM(cfg).eval()
    with pytest.raises(PalignError) as e:
        resolve_arch(model)
    msg = str(e.value)
    assert "gpt_neox" in msg and "o_proj_path" in msg and "--o-proj-path" in msg
    arch = resolve_arch(model, o_proj_path="gpt_neox.layers.{i}.attention.dense")
    assert (arch.n_layers, arch.n_heads, arch.head_dim, arch.hidden) == (LAYERS, H, 8, HIDDEN)
    acts = capture_head_activations(model, [_inputs()], arch=arch)
    assert acts.shape == (3, LAYERS, H, 8)
    with pytest.raises(PalignError, match="gpt_neox.layers.0.attn.o_proj"):
        resolve_arch(model, o_proj_path="gpt_neox.layers.{i}.attn.o_proj")
    with pytest.raises(PalignError, match="placeholder"):
        resolve_arch(model, o_proj_path="gpt_neox.layers.0.attention.dense")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_and_fp32() -> None:
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(**COMMON)
    model = tf.LlamaForCausalLM(cfg).eval().to("cuda")
    arch = resolve_arch(model)
    ids = _inputs().to("cuda")
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(3, LAYERS, H, arch.head_dim, generator=g)  # CPU float32
    delta[0] = 0
    u = torch.stack(
        [
            torch.stack([arch.w_o(layer) @ delta[b, layer].flatten() for layer in range(LAYERS)])
            for b in range(3)
        ]
    )
    before = _logits(model, ids)
    with steer_heads(model, delta, arch=arch):
        via_input = _logits(model, ids)
    with steer(model, u, arch=arch):
        via_output = _logits(model, ids)
    torch.testing.assert_close(via_input, via_output, rtol=1e-3, atol=1e-3)
    assert torch.equal(via_output[0], before[0])
    acts = capture_head_activations(model, [ids], arch=arch)
    assert acts.device.type == "cpu" and acts.dtype == torch.float32
    model.to(torch.bfloat16)
    arch = resolve_arch(model)
    with steer(model, u, arch=arch):
        out = model(input_ids=ids, use_cache=False).logits
        gen = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
        )
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert gen.shape == (3, ids.shape[1] + 3)
    assert _no_hooks(model)
    assert arch.w_o(0).dtype == torch.float32 and arch.w_o(0).device.type == "cpu"
