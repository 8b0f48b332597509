"""palign serve: the official openai client against a real uvicorn server on 127.0.0.1.

A tiny random Llama (the shared ``tiny_lm``) with two random PAS adapters; reference outputs
come from an independent path (transformers' ``generate`` / a plain forward under
:func:`palign.steering.steer`), not from the server's own engine.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch

from palign.chat import chat_ids
from palign.models.loading import LoadedModel
from palign.serve import create_app
from palign.serve.app import ServeConfig
from palign.serve.testing import serve_in_thread
from palign.steering import fit_pas, load_adapter, resolve_arch, save_adapter, steer

pytestmark = pytest.mark.usefixtures("one_thread")

PERSONS = {"alice": (1, 1.5), "bob": (2, 2.5)}  # name -> (seed, alpha)


def make_adapter(lm: LoadedModel, folder: Path, seed: int, alpha: float) -> Path:
    """A PAS adapter fitted on random activations (shape-correct for ``lm``)."""
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
        person=folder.name,
        extra={"steer_position": "all"},
    )


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory, tiny_lm: LoadedModel) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    for name, (seed, alpha) in PERSONS.items():
        make_adapter(tiny_lm, root / name, seed, alpha)
    return root


@pytest.fixture(scope="module")
def server(tiny_lm: LoadedModel, adapters_dir: Path):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    app = create_app(
        tiny_lm,
        [adapters_dir],
        ServeConfig(served_model_name="tiny", max_body_bytes=512_000, threads=1),
    )
    with serve_in_thread(app) as url:
        yield app.state.palign, url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=server[1], api_key="none", max_retries=0, timeout=60)


def u_of(lm: LoadedModel, adapters_dir: Path, name: str, alpha: float | None = None):  # type: ignore[no-untyped-def]
    return load_adapter(adapters_dir / name, lm).u_at(alpha)


def ref_greedy(lm: LoadedModel, ids: list[int], u, n: int, position: str = "all") -> list[int]:  # type: ignore[no-untyped-def]
    """Greedy tokens from transformers' own generate under the steering hooks."""
    x = torch.tensor([ids])
    with torch.no_grad(), steer(lm.model, u, position=position):
        out = lm.model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
            eos_token_id=None,
        )
    return out[0, len(ids) :].tolist()


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_models_and_naming(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny", "tiny:alice", "tiny:bob"]
    card = client.models.retrieve("tiny:bob")
    assert card.id == "tiny:bob" and card.model_extra["palign"]["steer_position"] == "all"


def test_default_position_follows_the_adapter(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    """As palign chat: the recorded position; "last" for adapters written before it was."""
    from palign.serve.registry import Registry

    folder = make_adapter(tiny_lm, tmp_path / "old", 1, 1.0)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    del cfg["extra"]["steer_position"]
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    assert Registry(tiny_lm).load(folder).position == "last"


def test_chat_matches_transformers_generate(
    client: openai.OpenAI, tiny_lm: LoadedModel, adapters_dir: Path
) -> None:
    ids = chat_ids(tiny_lm, msgs("How do you spend a free evening?"))
    cases = [("tiny", None, "all"), ("tiny:alice", "alice", "all"), ("tiny:bob", "bob", "last")]
    texts = []
    for model, person, pos in cases:
        r = client.chat.completions.create(
            model=model,
            messages=msgs("How do you spend a free evening?"),
            max_tokens=10,
            temperature=0,
            extra_body={"steer_position": pos},
        )
        u = u_of(tiny_lm, adapters_dir, person) if person else None
        want = ref_greedy(tiny_lm, ids, u, 10, pos)
        assert r.choices[0].message.content == tiny_lm.tokenizer.decode(
            want, skip_special_tokens=True
        )
        assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 10
        assert r.choices[0].finish_reason == "length"
        texts.append(r.choices[0].message.content)
    assert len(set(texts)) == 3  # the personalities really steer


def test_mixed_batch_equals_solo(server, tiny_lm: LoadedModel) -> None:  # type: ignore[no-untyped-def]
    srv, url = server
    c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
    prompts = ["Hi!", "Tell me about your weekend plans, in detail please.", "What matters?"]
    reqs = []
    for i in range(9):
        model = ["tiny", "tiny:alice", "tiny:bob"][i % 3]
        extra = {"steer_position": "last"} if i == 4 else {}
        if i == 7:
            extra = {"alpha": 0.5}
        reqs.append((model, prompts[i % 3] if i != 8 else prompts[1], extra))

    def ask(model: str, text: str, extra: dict) -> str:
        r = c.chat.completions.create(
            model=model, messages=msgs(text), max_tokens=12, temperature=0, extra_body=extra
        )
        return r.choices[0].message.content

    solo = [ask(*r) for r in reqs]
    eng = srv.engine
    out: dict[int, str] = {}
    with eng.model_lock:  # hold the engine until every request waits, then let go at once
        threads = [
            threading.Thread(target=lambda k=k: out.__setitem__(k, ask(*reqs[k])))
            for k in range(len(reqs))
        ]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        while eng.load["waiting"] < len(reqs) - 1 and time.monotonic() - t0 < 20:
            time.sleep(0.01)
    for t in threads:
        t.join(60)
    assert [out[k] for k in range(len(reqs))] == solo
    assert eng.stats["max_rows"] >= len(reqs) - 1  # they did share forward passes
    assert len(set(solo)) > 3


def test_streaming(client: openai.OpenAI) -> None:
    kw = dict(model="tiny:alice", messages=msgs("Hello there"), max_tokens=15, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    parts, finish, usage = [], None, None
    for ch in client.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}
    ):
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == full
    assert finish == "length" and usage.completion_tokens == 15
    lp = client.chat.completions.create(**kw, logprobs=True, top_logprobs=2).choices[0].logprobs
    streamed_lp = [
        t
        for ch in client.chat.completions.create(**kw, stream=True, logprobs=True, top_logprobs=2)
        for c in ch.choices
        if c.logprobs is not None
        for t in c.logprobs.content
    ]
    assert [(t.token, t.logprob) for t in streamed_lp] == [(t.token, t.logprob) for t in lp.content]
    assert len(streamed_lp) == 15
    text = (
        client.completions.create(
            model="tiny:bob", prompt="Once upon a time", max_tokens=8, temperature=0
        )
        .choices[0]
        .text
    )
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny:bob", prompt="Once upon a time", max_tokens=8, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == text


def _forward_logprobs(lm: LoadedModel, ids: list[int], u) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad(), steer(lm.model, u, position="all"):
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, -1)


def test_logprobs_match_forward(
    client: openai.OpenAI, tiny_lm: LoadedModel, adapters_dir: Path
) -> None:
    r = client.chat.completions.create(
        model="tiny:alice",
        messages=msgs("Describe yourself."),
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    ids = chat_ids(tiny_lm, msgs("Describe yourself."))
    u = u_of(tiny_lm, adapters_dir, "alice")
    gen = ref_greedy(tiny_lm, ids, u, 6)
    lp = _forward_logprobs(tiny_lm, ids + gen, u)
    for k, t in enumerate(content):
        want = lp[len(ids) - 1 + k]
        assert t.logprob == pytest.approx(float(want[gen[k]]), abs=1e-4)
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-6)  # greedy = top-1
        assert [x.logprob for x in t.top_logprobs] == sorted(
            (x.logprob for x in t.top_logprobs), reverse=True
        )

    # prompt scoring as lm-evaluation-harness does it: echo, max_tokens 0, logprobs
    text = "The cat sat on the mat."
    r = client.completions.create(
        model="tiny:alice", prompt=text, max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    lps = r.choices[0].logprobs
    pids = tiny_lm.tokenizer(text).input_ids
    want = _forward_logprobs(tiny_lm, pids, u)
    assert lps.token_logprobs[0] is None and len(lps.token_logprobs) == len(pids)
    for t in range(1, len(pids)):
        assert lps.token_logprobs[t] == pytest.approx(float(want[t - 1, pids[t]]), abs=1e-4)
    assert r.choices[0].text == tiny_lm.tokenizer.decode(pids)


def test_stop_seed_and_n(client: openai.OpenAI) -> None:
    kw = dict(model="tiny:bob", messages=msgs("Say something."), temperature=0)
    full = client.chat.completions.create(**kw, max_tokens=12).choices[0].message.content
    cut = full[len(full) // 2 : len(full) // 2 + 2]
    r = client.chat.completions.create(**kw, max_tokens=12, stop=[cut])
    assert r.choices[0].message.content == full[: full.index(cut)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**kw, max_tokens=12, stop=[cut], stream=True)
        if c.choices
    )
    assert streamed == full[: full.index(cut)]
    # seeded sampling: reproducible, n choices differ, and independent of the batch
    s = dict(model="tiny:alice", messages=msgs("Go."), temperature=1.0, top_p=0.9, max_tokens=8)
    a = client.chat.completions.create(**s, seed=7, n=3)
    b = client.chat.completions.create(**s, seed=7, n=3)
    ta = [c.message.content for c in a.choices]
    assert ta == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2] and len(set(ta)) > 1


def test_errors_openai_shape(client: openai.OpenAI, server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="tiny:nobody", messages=msgs("x"))
    assert e.value.status_code == 404 and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=msgs("x"), temperature=5)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=msgs("x"), max_tokens=100_000)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=msgs("x"), extra_body={"alpha": 2})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="tiny:alice", messages=msgs("x"), extra_body={"steer_position": "middle"}
        )
    url = server[1]
    r = httpx.post(
        f"{url}/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    big = json.dumps({"model": "tiny", "messages": msgs("x" * 600_000)})
    r = httpx.post(
        f"{url}/chat/completions", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = httpx.get(f"{url}/no/such/route")
    assert r.status_code == 404 and "error" in r.json()


def test_overload_503_and_api_key(tiny_lm: LoadedModel, adapters_dir: Path) -> None:
    cfg = ServeConfig(
        served_model_name="tiny", api_key="s3cret", max_batch=1, max_queue=0, threads=1
    )
    app = create_app(tiny_lm, [adapters_dir / "alice"], cfg)
    with serve_in_thread(app) as url:
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        assert e.value.status_code == 401
        c = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0, timeout=60)
        assert [m.id for m in c.models.list().data] == ["tiny", "tiny:alice"]
        eng = app.state.palign.engine
        codes: list[int] = []

        def ask() -> None:
            try:
                c.chat.completions.create(model="tiny:alice", messages=msgs("x"), max_tokens=3)
                codes.append(200)
            except openai.APIStatusError as err:
                codes.append(err.status_code)

        def wait(cond) -> None:  # type: ignore[no-untyped-def]
            t0 = time.monotonic()
            while not cond() and time.monotonic() - t0 < 20:
                time.sleep(0.005)

        admitted = eng.stats["admitted"]
        with eng.model_lock:  # the engine is busy: one slot taken, the queue holds nothing more
            ts = [threading.Thread(target=ask) for _ in range(3)]
            ts[0].start()
            wait(lambda: eng.stats["admitted"] > admitted)  # in the (only) slot
            ts[1].start()
            wait(lambda: eng.load["waiting"] == 1)  # waits for the slot: the queue is full now
            ts[2].start()
            wait(lambda: len(codes) == 1)
        for t in ts:
            t.join(30)
        assert sorted(codes) == [200, 200, 503]


def test_disconnect_frees_slot(server, client: openai.OpenAI) -> None:  # type: ignore[no-untyped-def]
    eng = server[0].engine
    cancelled = eng.stats["cancelled"]
    stream = client.chat.completions.create(
        model="tiny:alice",
        messages=msgs("Talk forever."),
        max_tokens=3000,
        temperature=0,
        stream=True,
    )
    got = 0
    for _ in stream:
        got += 1
        if got == 3:
            break
    stream.close()
    t0 = time.monotonic()
    while eng.load["running"] and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    assert eng.load == {"running": 0, "waiting": 0}
    assert eng.stats["cancelled"] == cancelled + 1  # dropped, not run to its 3000 tokens
    # a non-streaming client that gives up (timeout closes the connection) frees its row too
    body = {"model": "tiny:bob", "messages": msgs("Talk forever."), "max_tokens": 3000}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server[1]}/chat/completions", json=body, timeout=0.3)
    t0 = time.monotonic()
    while eng.load["running"] and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    assert eng.load == {"running": 0, "waiting": 0}
    assert eng.stats["cancelled"] == cancelled + 2


def test_personalities_upload_and_delete(
    client: openai.OpenAI, server, adapters_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    url = server[1]
    files = {
        f.name: base64.b64encode(f.read_bytes()).decode()
        for f in (adapters_dir / "alice").iterdir()
    }
    r = httpx.post(f"{url}/personalities", json={"name": "carol", "files": files})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "tiny:carol"
    assert "tiny:carol" in [m.id for m in client.models.list().data]
    kw = dict(messages=msgs("Who are you?"), max_tokens=8, temperature=0)
    same = client.chat.completions.create(model="tiny:carol", **kw).choices[0].message.content
    assert (
        same == client.chat.completions.create(model="tiny:alice", **kw).choices[0].message.content
    )
    r = httpx.post(f"{url}/personalities", json={"name": "carol", "files": files})
    assert r.status_code == 409
    peft = {
        "adapter_config.json": base64.b64encode(b'{"peft_type": "LORA"}').decode(),
        "adapter.safetensors": files["adapter.safetensors"],
    }
    r = httpx.post(f"{url}/personalities", json={"name": "dave", "files": peft})
    assert r.status_code == 400 and "does not match" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/personalities", json={"name": "bad name!", "files": files})
    assert r.status_code == 400
    assert httpx.delete(f"{url}/personalities/carol").status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny:carol", **kw)
    assert httpx.delete(f"{url}/personalities/carol").status_code == 404


def test_personality_from_answers(
    tiny_lm: LoadedModel, tiny_folder: Path, papi_dir: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Answers uploaded to the server are aligned like ``palign align --answers`` does."""
    from palign.cli import main

    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    answers = {str(i): (i * 7 % 5) + 1 for i in range(1, 41)}
    opts = {"alpha_grid": [0, 2], "k": 4}
    cfg = ServeConfig(served_model_name="tiny", data=papi_dir, threads=1)
    app = create_app(tiny_lm, [], cfg)
    with serve_in_thread(app) as url:
        r = httpx.post(
            f"{url}/personalities",
            json={"name": "eve", "answers": answers, "options": opts},
            timeout=120,
        )
        assert r.status_code == 201, r.text
        # the given name and the position it was fitted at (PAS: all), not legacy "last"
        assert r.json()["palign"]["person"] == "eve"
        assert r.json()["palign"]["steer_position"] == "all"
        assert app.state.palign.registry.get("eve").position == "all"
        assert httpx.get(f"{url}/personalities/eve").json()["status"] == "ready"
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        assert "tiny:eve" in [m.id for m in c.models.list().data]
        r = httpx.post(f"{url}/personalities", json={"name": "z", "answers": {"1": 9}})
        assert r.status_code == 400 and "1..5" in r.json()["error"]["message"]
        served = app.state.palign.registry.get("eve").adapter
    (tmp_path / "me.json").write_text(json.dumps(answers))
    argv = ["align", "--answers", str(tmp_path / "me.json"), "--model", str(tiny_folder),
            "--data", str(papi_dir), "--out", str(tmp_path / "cli"), "--alpha-grid", "0,2",
            "--k", "4"]  # fmt: skip
    assert main(argv) == 0
    ref = load_adapter(tmp_path / "cli")
    assert served.fit.heads == ref.fit.heads and served.alpha == ref.alpha
    torch.testing.assert_close(served.u_unit, ref.u_unit)
    assert served.config["extra"]["steer_position"] == ref.config["extra"]["steer_position"]


def test_chat_runs_while_a_fit_runs(
    tiny_lm: LoadedModel, adapters_dir: Path, papi_dir: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Aligning uploaded answers does not pause generation: a chat completes meanwhile."""
    import palign.serve.align as align_mod

    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    real = align_mod.align_answers
    started, release = threading.Event(), threading.Event()

    def slow_align(*a, **kw):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(60)  # the fit is "running" until the chat below has its answer
        return real(*a, **kw)

    monkeypatch.setattr(align_mod, "align_answers", slow_align)
    answers = {str(i): (i * 7 % 5) + 1 for i in range(1, 41)}
    cfg = ServeConfig(served_model_name="tiny", data=papi_dir, threads=1)
    app = create_app(tiny_lm, [adapters_dir / "alice"], cfg)
    with serve_in_thread(app) as url:
        res: dict[str, httpx.Response] = {}
        body = {"name": "eve", "answers": answers, "options": {"alpha_grid": [0, 2], "k": 4}}
        t = threading.Thread(
            target=lambda: res.__setitem__(
                "fit", httpx.post(f"{url}/personalities", json=body, timeout=120)
            )
        )
        t.start()
        assert started.wait(30)
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=15)
        try:
            r = c.chat.completions.create(
                model="tiny:alice", messages=msgs("Hi"), max_tokens=4, temperature=0
            )
            assert httpx.get(f"{url}/personalities/eve").json()["status"] == "aligning"
            assert httpx.post(f"{url}/personalities", json=body).status_code == 409  # in progress
        finally:
            release.set()
        assert r.choices[0].finish_reason == "length"  # answered before the fit could end
        t.join(120)
        assert res["fit"].status_code == 201, res["fit"].text
        assert httpx.get(f"{url}/personalities/eve").json()["status"] == "ready"
        assert httpx.get(f"{url}/personalities/nobody").status_code == 404


def make_lora(lm: LoadedModel, folder: Path, seed: int = 5) -> torch.nn.Module:
    """A random PEFT LoRA adapter on a copy of ``lm.model``; returns the PEFT model."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], lora_dropout=0.0,
        init_lora_weights=False, task_type="CAUSAL_LM",
    )  # fmt: skip
    pm = get_peft_model(copy.deepcopy(lm.model), cfg).eval()
    pm.save_pretrained(str(folder))
    return pm


def test_lora_personality_mixed_with_pas(
    tiny_lm: LoadedModel, adapters_dir: Path, tmp_path: Path
) -> None:
    """A PEFT LoRA adapter served per row equals PEFT's own model, alone and in a mixed batch."""
    pm = make_lora(tiny_lm, tmp_path / "lora-bob")
    cfg = ServeConfig(served_model_name="tiny", threads=1)
    app = create_app(tiny_lm, [adapters_dir, tmp_path / "lora-bob"], cfg)
    text = "What would you do on a rainy Sunday?"
    ids = chat_ids(tiny_lm, msgs(text))
    x = torch.tensor([ids])
    with torch.no_grad():
        ref = pm.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=10,
                          do_sample=False, eos_token_id=None)  # fmt: skip
    want = tiny_lm.tokenizer.decode(ref[0, len(ids) :], skip_special_tokens=True)
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        card = c.models.retrieve("tiny:lora-bob")
        assert card.model_extra["palign"]["kind"] == "lora"

        def ask(model: str) -> str:
            r = c.chat.completions.create(
                model=model, messages=msgs(text), max_tokens=10, temperature=0
            )
            return r.choices[0].message.content

        solo = {m: ask(m) for m in ("tiny", "tiny:alice", "tiny:lora-bob")}
        assert solo["tiny:lora-bob"] == want and len(set(solo.values())) == 3
        eng = app.state.palign.engine
        order = ["tiny:lora-bob", "tiny", "tiny:alice", "tiny:lora-bob", "tiny:alice", "tiny"]
        out: dict[int, str] = {}
        with eng.model_lock:
            ts = [threading.Thread(target=lambda k=k: out.__setitem__(k, ask(order[k])))
                  for k in range(len(order))]  # fmt: skip
            for t in ts:
                t.start()
            t0 = time.monotonic()
            while eng.load["waiting"] < len(order) - 1 and time.monotonic() - t0 < 20:
                time.sleep(0.01)
        for t in ts:
            t.join(60)
        assert [out[k] for k in range(len(order))] == [solo[m] for m in order]
        assert eng.stats["max_rows"] >= len(order) - 1
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(
                model="tiny:lora-bob", messages=msgs("x"), extra_body={"alpha": 2}
            )
        # upload of the same LoRA files under another name
        files = {
            f.name: base64.b64encode(f.read_bytes()).decode()
            for f in (tmp_path / "lora-bob").iterdir()
            if f.is_file() and f.name != "README.md"
        }
        r = httpx.post(f"{url}/personalities", json={"name": "lora2", "files": files})
        assert r.status_code == 201, r.text
        assert ask("tiny:lora2") == want


def test_lora_refusals(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    from palign.errors import PalignError
    from palign.serve.lora import load_lora

    make_lora(tiny_lm, tmp_path / "l")
    assert set(load_lora(tmp_path / "l", tiny_lm.model).layers) == {
        f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj", "o_proj")
    }
    cfg_path = tmp_path / "l" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key, value, needle in [("use_dora", True, "use_dora"), ("bias", "all", "bias"),
                               ("r", 3, "do not fit")]:  # fmt: skip
        cfg_path.write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(PalignError, match=needle):
            load_lora(tmp_path / "l", tiny_lm.model)


def test_completions_prompt_forms(client: openai.OpenAI, tiny_lm: LoadedModel) -> None:
    ids = tiny_lm.tokenizer("Once upon a time").input_ids
    kw = dict(model="tiny:alice", max_tokens=5, temperature=0)
    by_text = client.completions.create(prompt="Once upon a time", **kw).choices[0].text
    assert client.completions.create(prompt=ids, **kw).choices[0].text == by_text
    r = client.completions.create(prompt=["Once upon a time", "Hello"], n=2, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text == by_text  # greedy: n copies
    assert r.usage.prompt_tokens == len(ids) + len(tiny_lm.tokenizer("Hello").input_ids)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(prompt=[10**9], **kw)
