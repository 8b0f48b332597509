"""The in-process judge: judgements and choice log-probabilities of a local model.

A tiny random Llama whose output layer can only produce the digits 1-6 and a newline writes
judgements that parse; the log-probabilities the judge keeps at the choice tokens (and their
offsets in the text) are checked against one plain forward pass over prompt + judgement (an
independent computation, without the KV cache of ``generate``). SmolLM2 served by palign's
own server judges score-first: its digit distribution at the first token is no point mass,
and the weighted score equals a plain transformers forward's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from palign.chat import chat_ids
from palign.judge.client import CachedJudge, JudgeRequest, LocalJudge
from palign.judge.parse import choice_distribution, parse_score, weighted_score
from palign.models.loading import LoadedModel


@pytest.fixture(scope="module")
def digit_lm(tiny_lm: LoadedModel) -> LoadedModel:
    """tiny_lm whose lm_head only scores the tokens "1".."6" and "\\n" (all else -1e4 bias)."""
    tok = tiny_lm.tokenizer
    model = copy.deepcopy(tiny_lm.model)
    head = model.lm_head
    allowed = [tok.convert_tokens_to_ids(c) for c in "123456"]
    allowed.append(tok("\n", add_special_tokens=False).input_ids[0])
    bias = torch.full((head.out_features,), -1e4)
    bias[allowed] = 0.0
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        head.weight.mul_(0)
        head.weight[allowed] = torch.randn(len(allowed), head.in_features, generator=g) * 2
    head.bias = torch.nn.Parameter(bias)
    return LoadedModel(
        model, tok, "digits", "tiny-digits", None, torch.device("cpu"), torch.float32
    )


def test_local_judge_logprobs_match_a_plain_forward(digit_lm: LoadedModel, one_thread) -> None:
    judge = LocalJudge(digit_lm, batch_size=2)
    reqs = [JudgeRequest(f"Rate this answer number {k}.", max_tokens=8) for k in range(3)]
    resps = judge.complete_many(reqs)
    assert judge.requests_sent == 3
    tok = digit_lm.tokenizer
    for req, r in zip(reqs, resps):
        assert r.error is None and r.finish_reason == "length" and r.candidates
        assert set(r.text) <= set("123456\n")
        # every digit of the text is a candidate position
        assert len(r.candidates) == sum(c.isdigit() for c in r.text)
        prompt = chat_ids(digit_lm, req.messages())
        new = tok(r.text, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = digit_lm.model(torch.tensor([prompt + new])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        pos = [k for k, t in enumerate(new) if tok.decode([t]).strip()]
        for c, k in zip(r.candidates, pos):
            row = lp[len(prompt) + k - 1]
            assert set("123456") <= set(c["top"])  # the six choices are the likeliest tokens
            for t in "123456":
                want = float(row[tok.convert_tokens_to_ids(t)])
                assert c["top"][t] == pytest.approx(want, abs=1e-4)
        # each candidate knows where its token stands in the text
        for c in r.candidates:
            assert r.text[c["offset"] : c["offset"] + len(c["token"])] == c["token"]
        for j in (0, -1):  # the distribution at the first and at the last choice position
            d = choice_distribution(r.candidates, "123456", r.candidates[j]["offset"])
            row = lp[len(prompt) + pos[j] - 1]
            p = {c: float(row[tok.convert_tokens_to_ids(c)].exp()) for c in "123456"}
            assert d is not None and d[1] == pytest.approx(sum(p.values()), abs=1e-4)
            for c in "123456":
                assert d[0][c] == pytest.approx(p[c] / sum(p.values()), abs=1e-4)
        s = parse_score(r.text, "score-first")
        if s is not None:  # the text starts with the digit: read at the first token
            d = choice_distribution(r.candidates, "123456", r.candidates[0]["offset"])
            assert weighted_score(r.candidates, r.text.index(str(s))) == pytest.approx(
                sum(int(k) * p for k, p in d[0].items())
            )


def test_local_judge_cache_and_sampling(digit_lm: LoadedModel, tmp_path: Path, one_thread) -> None:
    judge = CachedJudge(LocalJudge(digit_lm, batch_size=4), folder=tmp_path)
    reqs = [JudgeRequest(f"q{k}", max_tokens=6, temperature=1.0, seed=5) for k in range(4)]
    a = judge.complete_many(reqs)
    assert judge.backend.requests_sent == 4 and judge.hits == 0
    b = judge.complete_many(reqs)
    assert judge.backend.requests_sent == 4 and judge.hits == 4 and all(r.cached for r in b)
    assert [r.text for r in a] == [r.text for r in b]
    # the same seed reproduces a sampled judgement without the cache
    c = LocalJudge(digit_lm, batch_size=4).complete_many(reqs)
    assert [r.text for r in c] == [r.text for r in a]


def test_local_judge_equals_the_model_behind_palign_serve(
    digit_lm: LoadedModel, tmp_path: Path, monkeypatch, one_thread
) -> None:
    """The same model judged in-process and through palign's own OpenAI-compatible server."""
    pytest.importorskip("fastapi")
    from palign.judge.client import OpenAIJudge
    from palign.serve import create_app
    from palign.serve.app import ServeConfig
    from palign.serve.testing import serve_in_thread

    reqs = [JudgeRequest(f"Rate answer {k}, please.", max_tokens=6) for k in range(3)]
    local = LocalJudge(digit_lm, batch_size=3).complete_many(reqs)
    monkeypatch.setenv("PALIGN_JUDGE_API_KEY", "sk-local")
    app = create_app(digit_lm, config=ServeConfig(served_model_name="digits", api_key="sk-local"))
    with serve_in_thread(app) as url:
        remote = OpenAIJudge("digits", url, retries=0).complete_many(reqs)
    for a, b in zip(local, remote):
        assert b.error is None and a.text == b.text
        assert [c["offset"] for c in a.candidates] == [c["offset"] for c in b.candidates]
        da = choice_distribution(a.candidates, "123456", a.candidates[0]["offset"])
        db = choice_distribution(b.candidates, "123456", b.candidates[0]["offset"])
        assert da is not None and db is not None
        for c in "123456":
            assert da[0][c] == pytest.approx(db[0][c], abs=1e-4)


def test_smollm2_served_score_first_weighted_is_read_at_the_first_token(
    tiny_lm: LoadedModel, papi, tmp_path: Path, monkeypatch, one_thread
) -> None:
    """SmolLM2 behind palign's OpenAI-compatible server judges score-first: its reply starts
    with the digit, the digit distribution there is no point mass (the weighted score differs
    from the chosen digit), and the weighted score equals sum k*p_k over the digits among the
    top 20 of a plain transformers forward over the chat prompt (renormalised)."""
    pytest.importorskip("fastapi")
    from palign.judge.client import OpenAIJudge
    from palign.judge.generate import GenerateConfig, read_jsonl, run_generate
    from palign.judge.prompts import rubric_prompt
    from palign.judge.run import judge_generations
    from palign.models.loading import load_model
    from palign.serve import create_app
    from palign.serve.app import ServeConfig
    from palign.serve.testing import serve_in_thread
    from tests.test_runs import small

    ds = small(papi, 3)
    folder = tmp_path / "gen"
    cfg = GenerateConfig(
        "few-shot", model="tiny", persons=[ds.persons[0].id], max_new_tokens=8, temperature=0.0
    )
    run_generate(cfg, folder, lm=tiny_lm, dataset=ds, progress=False)
    rows = read_jsonl(folder / "generations.jsonl")
    lm = load_model("smollm2")
    monkeypatch.setenv("PALIGN_JUDGE_API_KEY", "sk-local")
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    app = create_app(lm, config=ServeConfig(served_model_name="smol", api_key="sk-local"))
    with serve_in_thread(app) as url:
        res = judge_generations(
            folder, CachedJudge(OpenAIJudge("smol", url, retries=0)), progress=False
        )
    items = read_jsonl(folder / "judge" / "smol.jsonl")
    assert res["protocol"] == "score-first" and res["unparsed_rate"] == 0
    assert res["judge"]["resolved_models"] == ["smol"]
    tok = lm.tokenizer
    digits = {tok.convert_tokens_to_ids(c): int(c) for c in "123456"}
    diffs = []
    for r, i in zip(rows, items):
        assert i["choice_offset"] == 0 and i["weighted"] is not None
        msgs = [
            {"role": "user", "content": rubric_prompt(r["statement"], r["answer_label"], r["text"])}
        ]
        chat = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = tok(chat, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(ids).logits[0, -1].float(), -1)
        top = set(lp.topk(20).indices.tolist())
        p = {k: float(lp[t].exp()) for t, k in digits.items() if t in top}
        want = sum(k * v for k, v in p.items()) / sum(p.values())
        assert i["weighted"] == pytest.approx(want, abs=2e-3)
        assert i["score"] == max(p, key=p.get)  # greedy: the likeliest digit
        assert i["choice_mass"] == pytest.approx(sum(p.values()), abs=2e-3) and i["choice_mass"] < 1
        diffs.append(abs(i["weighted"] - i["score"]))
    assert max(diffs) > 0.05  # not a point mass: the weighted score is not the argmax
