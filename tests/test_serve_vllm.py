"""palign serve against vLLM's OpenAI-compatible server conventions (the official openai client).

Sampling extras are checked against transformers re-statements: ``generate`` with the same
settings for greedy runs, and transformers' own logits processors for the sampling
distribution. A tiny random Llama (``tiny_lm``) with one random PAS adapter.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import openai
import pytest
import torch
import transformers as tf

from palign import __version__
from palign.chat import chat_ids
from palign.models.loading import LoadedModel
from palign.serve import create_app
from palign.serve.app import ServeConfig
from palign.serve.sampling import SamplingParams, processed_logits
from palign.serve.testing import serve_in_thread
from palign.steering import load_adapter, steer
from tests.test_serve import make_adapter, msgs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, tiny_lm: LoadedModel) -> Path:
    return make_adapter(tiny_lm, tmp_path_factory.mktemp("ad") / "alice", 1, 1.5)


@pytest.fixture(scope="module")
def server(tiny_lm: LoadedModel, adapter: Path):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    app = create_app(
        tiny_lm,
        [adapter],
        ServeConfig(served_model_name="tiny", threads=1, max_batch=4, max_queue=4),
    )
    with serve_in_thread(app) as url:
        yield app.state.palign, url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=server[1], api_key="none", max_retries=0, timeout=60)


def _u(lm: LoadedModel, adapter: Path) -> torch.Tensor:
    return load_adapter(adapter, lm).u_at(None)


def generate(lm: LoadedModel, ids: list[int], u: torch.Tensor | None, **kw) -> list[int]:  # type: ignore[no-untyped-def]
    """transformers' generate under the steering hooks (position all); new tokens only."""
    x = torch.tensor([ids])
    kw.setdefault("eos_token_id", None)
    with torch.no_grad(), steer(lm.model, u, position="all"):
        out = lm.model.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
            **kw,
        )
    return out[0, len(ids) :].tolist()


# --- sampling extras -----------------------------------------------------------------------
CASES = [
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, min_p=0.05),
    dict(temperature=0.9, top_p=0.8),
    dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.3),
    dict(temperature=0.0, repetition_penalty=1.7),
]


@pytest.mark.parametrize("case", CASES)
def test_sampling_distribution_matches_transformers_processors(case: dict) -> None:
    """The distribution palign draws from = transformers' processors in vLLM's order."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, generator=g) * 3
    context = [3, 17, 17, 250, 499]
    params = SamplingParams(**case)
    got = processed_logits(logits, params, context)
    procs = tf.LogitsProcessorList()
    if "repetition_penalty" in case:
        procs.append(tf.RepetitionPenaltyLogitsProcessor(case["repetition_penalty"]))
    if case["temperature"] > 0:
        procs.append(tf.TemperatureLogitsWarper(case["temperature"]))
        if "min_p" in case:
            procs.append(tf.MinPLogitsWarper(case["min_p"]))
        if "top_k" in case:
            procs.append(tf.TopKLogitsWarper(case["top_k"]))
        if "top_p" in case:
            procs.append(tf.TopPLogitsWarper(case["top_p"]))
    want = procs(torch.tensor([context]), logits[None].clone())[0]
    assert torch.equal(torch.isinf(got), torch.isinf(want))  # the same tokens are excluded
    torch.testing.assert_close(torch.softmax(got, -1), torch.softmax(want, -1))
    assert 0 < int(torch.isfinite(got).sum()) < 500 or case["temperature"] == 0


def test_min_tokens_masks_eos() -> None:
    logits = torch.zeros(10)
    logits[7] = 5.0  # eos would win
    p = SamplingParams(temperature=0.0, min_tokens=3)
    assert int(processed_logits(logits, p, n_out=2, eos_ids={7}).argmax()) != 7
    assert int(processed_logits(logits, p, n_out=3, eos_ids={7}).argmax()) == 7
    want = tf.MinNewTokensLengthLogitsProcessor(0, 3, 7)(
        torch.zeros(1, 2, dtype=torch.long), logits[None].clone()
    )[0]
    assert torch.equal(processed_logits(logits, p, n_out=2, eos_ids={7}), want)


def test_top_k_1_and_min_p_1_are_greedy(client: openai.OpenAI) -> None:
    kw = dict(model="tiny:alice", messages=msgs("Go on."), max_tokens=8)
    greedy = client.chat.completions.create(**kw, temperature=0).choices[0].message.content
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        texts = {
            client.chat.completions.create(**kw, temperature=1.5, seed=s, extra_body=extra)
            .choices[0]
            .message.content
            for s in (1, 2, 3)
        }
        assert texts == {greedy}, extra
    plain = {
        client.chat.completions.create(**kw, temperature=1.5, seed=s).choices[0].message.content
        for s in (1, 2, 3)
    }
    assert len(plain) > 1  # without the extras, the seeds do differ


def test_repetition_penalty_matches_generate(
    client: openai.OpenAI, tiny_lm: LoadedModel, adapter: Path
) -> None:
    ids = chat_ids(tiny_lm, msgs("Tell me more."))
    u = _u(tiny_lm, adapter)
    want = generate(tiny_lm, ids, u, max_new_tokens=12, repetition_penalty=2.0)
    plain = generate(tiny_lm, ids, u, max_new_tokens=12)
    assert want != plain  # the penalty changes this greedy text
    r = client.chat.completions.create(
        model="tiny:alice",
        messages=msgs("Tell me more."),
        max_tokens=12,
        temperature=0,
        extra_body={"repetition_penalty": 2.0},
    )
    assert r.choices[0].message.content == tiny_lm.tokenizer.decode(want, skip_special_tokens=True)


def test_continue_final_message_and_generation_prompt(
    client: openai.OpenAI, server, tiny_lm: LoadedModel, adapter: Path
) -> None:  # type: ignore[no-untyped-def]
    conv = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am"}]
    tok = tiny_lm.tokenizer
    ids = tok.apply_chat_template(
        conv, tokenize=False, add_generation_prompt=False, continue_final_message=True
    )
    ids = tok(ids, add_special_tokens=False).input_ids
    assert tok.decode(ids).endswith("I am")
    want = generate(tiny_lm, ids, _u(tiny_lm, adapter), max_new_tokens=6)
    r = client.chat.completions.create(
        model="tiny:alice",
        messages=conv,
        max_tokens=6,
        temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert r.choices[0].message.content == tok.decode(want, skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(ids)
    with pytest.raises(openai.BadRequestError) as e:  # vLLM: the two exclude each other
        client.chat.completions.create(
            model="tiny", messages=conv, extra_body={"continue_final_message": True}
        )
    assert e.value.body["param"] == "continue_final_message"
    with pytest.raises(openai.BadRequestError) as e:  # and an assistant message last
        client.chat.completions.create(
            model="tiny",
            messages=conv[:1],
            extra_body={"continue_final_message": True, "add_generation_prompt": False},
        )
    assert "assistant message last" in e.value.body["message"]
    # add_generation_prompt false: the template without the assistant opening
    text = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=False)
    ids = tok(text, add_special_tokens=False).input_ids
    want = generate(tiny_lm, ids, _u(tiny_lm, adapter), max_new_tokens=6)
    r = client.chat.completions.create(
        model="tiny:alice",
        messages=conv[:1],
        max_tokens=6,
        temperature=0,
        extra_body={"add_generation_prompt": False},
    )
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == tok.decode(want, skip_special_tokens=True)
    url = server[1].removesuffix("/v1")
    got = httpx.post(
        f"{url}/tokenize",
        json={"model": "tiny", "messages": conv[:1], "add_generation_prompt": False},
    ).json()
    text = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=False)
    assert got["tokens"] == tok(text, add_special_tokens=False).input_ids


def test_unknown_fields_are_refused(client: openai.OpenAI, server) -> None:  # type: ignore[no-untyped-def]
    for extra in ({"use_beam_search": True}, {"guided_json": {}}, {"top_a": 0.1}):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="tiny", messages=msgs("x"), max_tokens=2, extra_body=extra
            )
        assert e.value.body["param"] == next(iter(extra))
        assert "not implement" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"echo2": 1})
    assert e.value.body["param"] == "echo2"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny", messages=msgs("x"), max_tokens=2, extra_body={"min_tokens": 5}
        )
    assert e.value.body["param"] == "min_tokens"
    for bad in ({"top_k": -2}, {"min_p": 1.5}, {"repetition_penalty": 0}, {"min_tokens": -1}):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body=bad)
        assert e.value.body["param"] == next(iter(bad))


def test_adapter_folder_named_like_the_base_is_refused(tiny_lm: LoadedModel, adapter: Path) -> None:
    from palign.errors import PalignError

    with pytest.raises(PalignError, match="named like the base model"):
        create_app(tiny_lm, [adapter], ServeConfig(served_model_name="alice"))


# --- eos, stop strings, usage and logprobs --------------------------------------------------
@pytest.fixture
def eos_server(tiny_lm: LoadedModel, adapter: Path):  # type: ignore[no-untyped-def]
    """A server whose eos is the 4th greedy token of a fixed chat (the tiny model never
    emits the real one); yields (engine, url, eos id, prompt ids, greedy ids)."""
    ids = chat_ids(tiny_lm, msgs("Describe yourself."))
    u = _u(tiny_lm, adapter)
    free = generate(tiny_lm, ids, u, max_new_tokens=10)
    k = next(i for i in range(3, 10) if free[i] not in free[:i])
    app = create_app(tiny_lm, [adapter], ServeConfig(served_model_name="tiny", threads=1))
    app.state.palign.engine.eos_ids = frozenset({free[k]})
    with serve_in_thread(app) as url:
        yield app.state.palign, url, free[k], ids, free[: k + 1]


def test_eos_counts_like_vllm(eos_server, tiny_lm: LoadedModel, adapter: Path) -> None:  # type: ignore[no-untyped-def]
    srv, url, eos, ids, upto = eos_server
    c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
    kw = dict(model="tiny:alice", messages=msgs("Describe yourself."), max_tokens=10, temperature=0)
    r = c.chat.completions.create(**kw, logprobs=True)
    dec = tiny_lm.tokenizer.decode
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == dec(upto[:-1], skip_special_tokens=True)
    # vLLM counts the eos token in usage and gives it a logprob entry
    assert r.usage.completion_tokens == len(upto)
    assert [t.token for t in r.choices[0].logprobs.content] == [dec([t]) for t in upto]
    streamed = [
        t.token
        for ch in c.chat.completions.create(**kw, logprobs=True, stream=True)
        for x in ch.choices
        if x.logprobs is not None
        for t in x.logprobs.content
    ]
    assert streamed == [t.token for t in r.choices[0].logprobs.content]
    # min_tokens: no eos before it (transformers' min_new_tokens), ignore_eos: none at all
    u = _u(tiny_lm, adapter)
    want = generate(tiny_lm, ids, u, max_new_tokens=10, min_new_tokens=len(upto) + 2,
                    eos_token_id=eos)  # fmt: skip
    assert want[-1] == eos and len(want) > len(upto)  # the eos came later for min_tokens
    r = c.chat.completions.create(**kw, extra_body={"min_tokens": len(upto) + 2})
    assert r.usage.completion_tokens == len(want)  # the eos included
    assert r.choices[0].message.content == dec(want[:-1], skip_special_tokens=True)
    want = generate(tiny_lm, ids, u, max_new_tokens=10)
    r = c.chat.completions.create(**kw, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 10
    assert r.choices[0].message.content == dec(want, skip_special_tokens=True)


def test_stop_string_logprobs_agree(client: openai.OpenAI) -> None:
    kw = dict(model="tiny:alice", messages=msgs("Say something."), temperature=0, max_tokens=12)
    full = client.chat.completions.create(**kw, logprobs=True)
    toks = [t.token for t in full.choices[0].logprobs.content]
    # a stop string that ends inside the 6th token: text before it, that token still counted
    text6 = "".join(toks[:5])
    cut = (toks[5].strip() or toks[5])[:2]
    stop = text6[-1:] + cut if text6 else cut
    r = client.chat.completions.create(**kw, logprobs=True, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    n = len(r.choices[0].logprobs.content)
    assert n == r.usage.completion_tokens
    streamed = [
        t
        for ch in client.chat.completions.create(**kw, logprobs=True, stop=[stop], stream=True)
        for x in ch.choices
        if x.logprobs is not None
        for t in x.logprobs.content
    ]
    assert len(streamed) == n


def test_completion_top_logprobs_include_chosen(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="tiny:alice", prompt="Once upon a time", max_tokens=16, temperature=2.0, seed=3,
        logprobs=2,
    )  # fmt: skip
    lp = r.choices[0].logprobs
    sizes = []
    for tok, top in zip(lp.tokens, lp.top_logprobs):
        assert tok in top and len(top) <= 3
        sizes.append(len(top))
    assert 3 in sizes  # some sampled tokens were outside the top 2: k + 1 entries then


# --- limits and conventions ------------------------------------------------------------------
def test_never_fitting_request_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:  # max_batch 4 + max_queue 4 = 8
        client.chat.completions.create(model="tiny", messages=msgs("x"), n=9, max_tokens=2)
    assert e.value.status_code == 400 and e.value.body["param"] == "n"
    assert "--max-batch 4" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt=["a", "b", "c"], n=3, max_tokens=2)
    assert len(client.completions.create(model="tiny", prompt="a", n=8, max_tokens=1).choices) == 8


def test_conventions(client: openai.OpenAI, server, tiny_lm: LoadedModel) -> None:  # type: ignore[no-untyped-def]
    srv, url = server
    root = url.removesuffix("/v1")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny", messages=msgs("x"), stream_options={"include_usage": True}
        )
    assert e.value.body["param"] == "stream_options"
    body = json.dumps({"model": "tiny", "messages": msgs("x"), "max_tokens": 2}).encode()

    def chunks():  # type: ignore[no-untyped-def]
        yield body[:10]
        yield body[10:]

    js = {"content-type": "application/json"}
    r = httpx.post(f"{url}/chat/completions", content=chunks(), headers=js, timeout=30)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2
    big = json.dumps({"model": "tiny", "messages": msgs("x" * (17 * 1024 * 1024))}).encode()
    r = httpx.post(f"{url}/chat/completions", content=iter([big]), headers=js, timeout=30)
    assert r.status_code == 413
    r = httpx.post(
        f"{url}/chat/completions", content=b'{"model": tiny}', headers={"content-type": "application/json"}
    )  # fmt: skip
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] is None and "Expecting value" in err["message"]
    assert httpx.get(f"{root}/version").json() == {"version": __version__}
    card = client.models.retrieve("tiny:alice")
    assert card.model_extra["max_model_len"] == srv.engine.max_context == 4096
    t = httpx.post(f"{root}/tokenize", json={"model": "tiny", "prompt": "Hello world"}).json()
    assert t["tokens"] == tiny_lm.tokenizer("Hello world").input_ids
    assert t["count"] == len(t["tokens"]) and t["max_model_len"] == 4096
    chat = httpx.post(f"{root}/tokenize", json={"model": "tiny:alice", "messages": msgs("Hi")})
    assert srv.registry.get("alice").system_prompt is None  # (export tests cover one)
    assert chat.json()["tokens"] == chat_ids(tiny_lm, msgs("Hi"))
    d = httpx.post(f"{root}/detokenize", json={"model": "tiny", "tokens": t["tokens"]}).json()
    assert d == {"prompt": "Hello world"}
    assert httpx.post(f"{root}/detokenize", json={"tokens": [10**9]}).status_code == 400


def test_personality_names_and_corrupt_upload(server, adapter: Path) -> None:  # type: ignore[no-untyped-def]
    srv, url = server
    files = {f.name: base64.b64encode(f.read_bytes()).decode() for f in adapter.iterdir()}
    r = httpx.post(f"{url}/personalities", json={"name": "tiny", "files": files})
    assert r.status_code == 400 and "base model" in r.json()["error"]["message"]
    bad = dict(files, **{"adapter.safetensors": base64.b64encode(b"garbage" * 10).decode()})
    r = httpx.post(f"{url}/personalities", json={"name": "broken", "files": bad})
    msg = r.json()["error"]["message"]
    assert r.status_code == 400 and "palign align" in msg
    assert str(srv.upload_dir) not in msg and "/tmp" not in msg and "palign fit" not in msg
    r = httpx.post(f"{url}/personalities", json={"name": "x", "files": files, "colour": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "colour"


def test_metrics(client: openai.OpenAI, server) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client.parser import text_string_to_metric_families

    url = server[1]
    before = client.chat.completions.create(
        model="tiny:alice", messages=msgs("Hi"), max_tokens=3, temperature=0
    )
    client.completions.create(model="tiny", prompt="Hello", max_tokens=2, temperature=0)
    text = httpx.get(url.removesuffix("/v1") + "/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("palign_requests_total", (("endpoint", "chat"), ("personality", "alice")))] >= 1
    assert (
        samples[("palign_requests_total", (("endpoint", "completions"), ("personality", "")))] >= 1
    )
    gen = samples[("palign_generation_tokens_total", (("personality", "alice"),))]
    assert gen >= before.usage.completion_tokens
    assert samples[("palign_requests_waiting", ())] == 0
    assert samples[("palign_personalities", ())] >= 1
    assert samples[("palign_batch_size_count", ())] >= 4  # one observation per decoding step
