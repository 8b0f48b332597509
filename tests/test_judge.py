"""The judge against a real OpenAI-compatible HTTP server on loopback (no mocks of the API).

A minimal FastAPI app (started with uvicorn in a thread) serves ``/v1/chat/completions`` in the
OpenAI shape; each test scripts what it answers. The judge talks to it through the official
``openai`` client: retries (429 then 200, 500 then 200), timeouts, malformed JSON,
unparseable judgements, a wrong key (401), an unreachable port, the disk cache, log-probability
weighted scores, pairwise mode and judge agreement.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from fastapi import FastAPI, Request  # noqa: E402  (module level: FastAPI resolves the annotation)
from fastapi.responses import JSONResponse, Response  # noqa: E402

from palign.cli import main  # noqa: E402
from palign.data.types import Dataset
from palign.judge.client import CachedJudge, JudgeRequest, OpenAIJudge
from palign.judge.generate import GenerateConfig, read_jsonl, run_generate
from palign.judge.parse import parse_choice, parse_judgement, parse_score, weighted_score
from palign.judge.prompts import rubric_prompt
from palign.judge.run import agreement, judge_generations, judge_pairwise
from palign.models.loading import LoadedModel
from tests.test_runs import small

KEY = "sk-test-123"

# --- the loopback server --------------------------------------------------------------------


@dataclass
class Reply:
    """What the server sends back: a status, a JSON body or raw bytes, headers, a delay."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class ServerState:
    handler: Callable[[dict[str, Any]], Reply] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def completion(
    text: str,
    model: str,
    dist: dict[str, float] | list[dict[str, float]] | None = None,
) -> dict[str, Any]:
    """An OpenAI chat.completion body; with ``dist``, logprobs whose choice tokens carry it.

    ``dist`` is one distribution for every choice token, or a list: one per choice token in
    order (the last repeated for any further ones).
    """
    logprobs = None
    if dist is not None:
        dists = dist if isinstance(dist, list) else [dist]
        content = []
        n = 0
        for tok in re.findall(r"\s*\S+", text):
            d = dists[min(n, len(dists) - 1)]
            if tok.strip() in d:
                n += 1
                # the sampled token itself is among the alternatives, as real endpoints return
                top = [
                    {"token": tok if k == tok.strip() else k, "logprob": math.log(p), "bytes": None}
                    for k, p in d.items()
                ]
                top.append({"token": "the", "logprob": math.log(1e-4), "bytes": None})
                lp = math.log(d[tok.strip()])
            else:
                top, lp = [{"token": tok, "logprob": 0.0, "bytes": None}], 0.0
            content.append({"token": tok, "logprob": lp, "bytes": None, "top_logprobs": top})
        logprobs = {"content": content}
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": logprobs,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def make_app(state: ServerState) -> Any:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        with state.lock:
            state.requests.append(body)
        if request.headers.get("authorization") != f"Bearer {KEY}":
            err = {
                "message": "Incorrect API key provided",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
            return JSONResponse({"error": err}, status_code=401)
        assert state.handler is not None
        r = state.handler(body)
        if r.delay:
            await asyncio.sleep(r.delay)
        if r.raw is not None:
            return Response(r.raw, status_code=r.status, media_type="application/json")
        return JSONResponse(r.body, status_code=r.status, headers=r.headers)

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, ServerState]]:
    import uvicorn

    state = ServerState()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = uvicorn.Config(make_app(state), host="127.0.0.1", port=port, log_level="error")
    srv = uvicorn.Server(cfg)
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started:
        if time.time() - t0 > 20:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1", state
    srv.should_exit = True
    th.join(timeout=5)


@pytest.fixture
def srv(server: tuple[str, ServerState], monkeypatch, tmp_path: Path) -> tuple[str, ServerState]:
    """The server with a fresh script and request log; the right key; a fresh cache."""
    url, state = server
    state.requests.clear()
    state.handler = None
    monkeypatch.setenv("PALIGN_JUDGE_API_KEY", KEY)
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    return url, state


# --- a scripted judge ---------------------------------------------------------------------


def _field(prompt: str, name: str) -> str:
    m = re.search(rf"\[{re.escape(name)}\]: (.*?)\n\*\*\*", prompt, re.S)
    assert m, name
    return m.group(1).strip()


def scripted_score(statement: str, response: str, model: str) -> int:
    """The scripted judge's choice: a fixed function of what it is shown."""
    h = sum(map(ord, statement + response + model))
    return h % 6 + 1


SCORE_DIST = {"1": 0.05, "2": 0.05, "3": 0.1, "4": 0.2, "5": 0.25}  # + the rest on the choice


def score_dist(s: int) -> dict[str, float]:
    d = {k: v for k, v in SCORE_DIST.items()}
    d[str(s)] = d.get(str(s), 0.0) + 0.35
    total = sum(d.values())
    return {k: v / total for k, v in d.items()}


SCORE_FIRST_MARK = "Your reply must start with the digit"


def rubric_handler(
    unparsed_item: str | None = None, resolved: str | None = None
) -> Callable[[dict[str, Any]], Reply]:
    """A scripted judge for both protocols.

    score-first: replies "<s>" then a line of explanation, the first token carrying
    :func:`score_dist`. reasoning: a line of reasoning, "<s>" on its own line (carrying
    :func:`score_dist`) and repeated on the last line as a point mass (a real judge copies the
    digit it already wrote). The answering model is reported as ``resolved`` (default: the
    requested name).
    """

    def handle(body: dict[str, Any]) -> Reply:
        prompt = body["messages"][0]["content"]
        st = _field(prompt, "Statement")
        resp = _field(prompt, "Generated Response")
        model = resolved or body["model"]
        s = scripted_score(st, resp, body["model"])
        if unparsed_item and unparsed_item in st:
            return Reply(body=completion(f"I would say about {s} out of 6.", model))
        lp = body.get("logprobs")
        if SCORE_FIRST_MARK in prompt:
            text = f"{s}\nThe response says little."
            return Reply(body=completion(text, model, score_dist(s) if lp else None))
        text = f"The response says little.\nSo the choice is:\n{s}\n{s}"
        dist = [score_dist(s), {str(s): 1.0}] if lp else None
        return Reply(body=completion(text, model, dist))

    return handle


# --- generations (tiny random model) -------------------------------------------------------


@pytest.fixture(scope="module")
def gen_folders(
    tmp_path_factory: pytest.TempPathFactory, papi: Dataset, tiny_lm: LoadedModel
) -> dict[str, Path]:
    ds = small(papi, 5)
    out = {}
    for method in ("vanilla", "few-shot"):
        folder = tmp_path_factory.mktemp(f"gen-{method}")
        cfg = GenerateConfig(
            method,
            model="tiny",
            persons=[p.id for p in ds.persons[:2]],
            max_new_tokens=6,
            temperature=0.0,
            batch_size=8,
        )
        run_generate(cfg, folder, lm=tiny_lm, dataset=ds, progress=False)
        out[method] = folder
    return out


def _judge(url: str, cache: Path | None = None, **kw: Any) -> CachedJudge:
    kw = {"retries": 2, "timeout": 5.0, "backoff": 0.01, "concurrency": 4, **kw}
    j = CachedJudge(OpenAIJudge("judge-a", url, **kw))
    if cache is not None:
        j.folder = cache
    return j


def _copy(folder: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(folder, dst)
    return dst


# --- tests ----------------------------------------------------------------------------------


def test_parse_rules() -> None:
    r = "reasoning"
    assert parse_score("reasoning...\n4\n4", r) == 4
    assert parse_score("**5**\n\n  5  \n", r) == 5
    assert parse_score("4", r) is None  # not repeated
    assert parse_score("3\n4", r) is None  # disagree
    assert parse_score("Step 1\n2\nmore\n4\n4", r) is None  # conflicting bare choices
    assert parse_score("Score: 4\n4", r) is None  # the earlier one is not on its own line
    assert parse_score("4.\n4.", r) is None and parse_score("7\n7", r) is None
    assert parse_score("", r) is None and parse_score(None, r) is None
    assert parse_choice("...\nB\nB", "AB") == "B" and parse_choice("A\nB", "AB") is None
    # score-first: the reply starts with the digit
    assert parse_score("4") == 4 and parse_score(" **5** because") == 5
    assert parse_score("3\nThe response...") == 3 and parse_score("6.") == 6
    assert parse_score('"2"') == 2  # quoted, as the prompt shows the digits
    for bad in ("Score: 4", "45", "4.5", "7", "The answer is 4", "", None):
        assert parse_score(bad) is None, bad
    # where the choice is read: score-first the first character, reasoning the first bare line
    assert parse_judgement("  4\nbecause", "123456", "score-first") == ("4", 2)
    text = "Step 1: 2 ideas\n**4**\nso\n4"
    assert parse_judgement(text, "123456", "reasoning") == ("4", text.index("**4**") + 2)
    cands = [
        {
            "token": "\n4",
            "top": {"4": math.log(0.5), " 4": math.log(0.25), "6": math.log(0.25)},
            "offset": 3,
        },
        {"token": "\n4", "top": {"4": 0.0}, "offset": 5},
    ]
    assert weighted_score(cands, 4) == pytest.approx(4 * 0.75 + 6 * 0.25)
    assert weighted_score(cands, 6) == pytest.approx(4.0)  # the repetition: a point mass
    assert weighted_score(cands, 3) == pytest.approx(4.5)  # the token "\n4" starts at 3
    assert weighted_score(cands, 8) is None and weighted_score(cands, None) is None
    assert weighted_score(None, 4) is None
    # only single-character choice tokens are choice positions ("12" is not a "1" or a "2"),
    # each with its offset in the text the tokens spell
    from types import SimpleNamespace as NS

    from palign.judge.client import _candidates

    toks = [
        NS(token=t, logprob=-0.1, top_logprobs=[NS(token=t, logprob=-0.1)])
        for t in ("12", "\n4", "x", "5")
    ]
    got = _candidates(toks, "123456", "12\n4x5")
    assert [(c["token"], c["offset"]) for c in got] == [("\n4", 2), ("5", 5)]
    # an endpoint that trimmed the text's leading newline: offsets shift with it
    assert [c["offset"] for c in _candidates(toks[1:], "123456", "4x5")] == [-1, 2]
    # tokens that do not spell the text: no offsets, no weighted score
    assert [c["offset"] for c in _candidates(toks, "123456", "other")] == [None, None]


@pytest.mark.parametrize("protocol", ["score-first", "reasoning"])
def test_scores_intervals_logprobs_and_cache(
    srv: tuple[str, ServerState], gen_folders: dict[str, Path], tmp_path: Path, protocol: str
) -> None:
    """Means, intervals and weighted scores against a re-statement; the weighted score is read
    at the first choice position (reasoning: the first bare line carries the distribution, the
    repetition a point mass, so reading the repetition would give weighted == score)."""
    url, state = srv
    folder = _copy(gen_folders["few-shot"], tmp_path / "g")
    rows = read_jsonl(folder / "generations.jsonl")
    unparsed_item = rows[0]["statement"]
    state.handler = rubric_handler(unparsed_item)
    judge = _judge(url)
    res = judge_generations(folder, judge, protocol=protocol, progress=False)
    uniq = {rubric_prompt(r["statement"], r["answer_label"], r["text"], protocol) for r in rows}
    assert res["n_items"] == len(rows) == 10 and len(state.requests) == len(uniq)  # sent once
    sent = state.requests[0]
    assert sent["model"] == "judge-a" and sent["logprobs"] is True and sent["top_logprobs"] == 20
    assert sent["temperature"] == 0
    assert sent["max_tokens"] == (16 if protocol == "score-first" else 512)
    assert res["protocol"] == protocol
    assert res["prompts"]["rubric_version"] == ("s1" if protocol == "score-first" else "r1")
    stem = "judge-a" if protocol == "score-first" else "judge-a-reasoning"
    shown = {
        (
            _field(q["messages"][0]["content"], "Statement"),
            _field(q["messages"][0]["content"], "Target Value"),
        )
        for q in state.requests
    }
    assert shown == {(r["statement"], r["answer_label"]) for r in rows}
    # independent re-statement of the per-trait means, intervals and weighted scores
    from scipy import stats

    want: dict[str, list[int]] = {}
    wantw: dict[str, list[float]] = {}
    n_unparsed = 0
    for r in rows:
        if r["statement"] == unparsed_item:
            n_unparsed += 1
            continue
        s = scripted_score(r["statement"], r["text"].strip(), "judge-a")
        want.setdefault(r["trait"], []).append(s)
        wantw.setdefault(r["trait"], []).append(sum(int(k) * p for k, p in score_dist(s).items()))
    for t, d in res["traits"].items():
        x = np.array(want.get(t, []), float)
        if len(x) == 0:
            assert d["score"]["mean"] is None
            continue
        assert d["score"]["mean"] == pytest.approx(x.mean(), abs=1e-4)
        assert d["weighted"]["mean"] == pytest.approx(np.mean(wantw[t]), abs=1e-4)
        if len(x) > 1 and x.std() > 0:
            lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
            if np.isfinite(lo):
                lo, hi = max(lo, 1.0), min(hi, 6.0)  # clipped to the scale
                assert (d["score"]["lo"], d["score"]["hi"]) == pytest.approx((lo, hi), abs=1e-3)
    assert res["overall"]["unparsed"] == n_unparsed >= 1
    assert res["unparsed_rate"] == pytest.approx(n_unparsed / len(rows), abs=1e-4)
    items = read_jsonl(folder / "judge" / f"{stem}.jsonl")
    assert [i["score"] is None for i in items] == [r["statement"] == unparsed_item for r in rows]
    scored = [i for i in items if i["score"] is not None]
    # the weighted score is not the sampled choice: the distribution is not a point mass
    assert all(abs(i["weighted"] - i["score"]) > 0.1 for i in scored)
    assert all(i["judge_model"] == "judge-a" for i in items)
    assert json.loads((folder / "judge" / f"{stem}.json").read_text())["judge"]["api_key_env"] == (
        "PALIGN_JUDGE_API_KEY"
    )
    # cache: a second run sends no request and gives the same numbers
    n = len(state.requests)
    res2 = judge_generations(folder, _judge(url), protocol=protocol, progress=False)
    assert len(state.requests) == n and res2["requests"]["cached"] == len(rows)
    assert res2["traits"] == res["traits"]
    assert res2["judge"]["resolved_models"] == ["judge-a"]  # kept in the cache
    # another judge model is another cache identity
    res3 = judge_generations(
        folder,
        CachedJudge(OpenAIJudge("judge-b", url, backoff=0.01)),
        protocol=protocol,
        progress=False,
    )
    assert len(state.requests) == n + len(uniq) and res3["requests"]["cached"] == 0


def test_retries_on_429_and_500(srv: tuple[str, ServerState], gen_folders, tmp_path: Path) -> None:
    url, state = srv
    folder = _copy(gen_folders["vanilla"], tmp_path / "g")
    base = rubric_handler()
    seen: dict[str, int] = {}

    def flaky(body: dict[str, Any]) -> Reply:
        p = body["messages"][0]["content"]
        seen[p] = seen.get(p, 0) + 1
        if seen[p] == 1:
            return Reply(
                429,
                {"error": {"message": "Rate limit reached", "type": "requests"}},
                headers={"retry-after-ms": "5"},
            )
        if seen[p] == 2:
            return Reply(500, {"error": {"message": "boom", "type": "server_error"}})
        return base(body)

    state.handler = flaky
    judge = _judge(url, retries=2)
    res = judge_generations(folder, judge, progress=False)
    n = res["n_items"]
    u = len(seen)  # identical prompts (vanilla answers are person-independent) are sent once
    assert 0 < u <= n and res["requests"]["errors"] == 0 and len(state.requests) == 3 * u
    assert judge.backend.retried == 2 * u and res["unparsed_rate"] == 0
    # with fewer retries than failures the items fail, are recorded as errors and not cached
    state.requests.clear()
    seen.clear()
    c2 = tmp_path / "cache2"
    res = judge_generations(folder, _judge(url, c2, retries=1), name="r1", progress=False)
    assert res["requests"]["errors"] == n and res["overall"]["errors"] == n
    assert all(
        "HTTP 500 after 2 attempts" in i["error"] for i in read_jsonl(folder / "judge" / "r1.jsonl")
    )
    res = judge_generations(folder, _judge(url, c2, retries=1), name="r1", progress=False)
    assert res["requests"]["errors"] == 0 and res["requests"]["cached"] == 0


def test_timeout_and_bad_json(
    srv: tuple[str, ServerState], gen_folders, tmp_path: Path, capsys
) -> None:
    url, state = srv
    folder = _copy(gen_folders["vanilla"], tmp_path / "g")
    state.handler = lambda body: Reply(body=completion("x\n3\n3", body["model"]), delay=2.0)
    res = judge_generations(
        folder, _judge(url, timeout=0.3, retries=1, concurrency=10), progress=False
    )
    assert res["requests"]["errors"] == res["n_items"]
    items = read_jsonl(folder / "judge" / "judge-a.jsonl")
    assert all(i["error"] == "timed out after 0.3 s after 2 attempts" for i in items)
    state.handler = lambda body: Reply(raw=b'{"id": "x", "choices": [')
    argv = [
        "judge",
        str(folder),
        "--judge-model",
        "judge-a",
        "--base-url",
        url,
        "--retries",
        "1",
        "--backoff",
        "0.01",
        "--quiet",
        "--format",
        "json",
    ]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["requests"]["errors"] == d["n_items"]
    assert all(
        "malformed response" in i["error"] for i in read_jsonl(folder / "judge" / "judge-a.jsonl")
    )
    # nothing of that was cached: a healthy server now answers every item
    state.handler = rubric_handler()
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["requests"]["errors"] == 0 and d["requests"]["cached"] == 0
    assert d["unparsed_rate"] == 0


def test_wrong_key_and_unreachable_url(
    srv: tuple[str, ServerState], gen_folders, tmp_path: Path, capsys, monkeypatch
) -> None:
    url, state = srv
    state.handler = rubric_handler()
    folder = _copy(gen_folders["vanilla"], tmp_path / "g")
    monkeypatch.setenv("PALIGN_JUDGE_API_KEY", "sk-wrong")
    rc = main(["judge", str(folder), "--judge-model", "judge-a", "--base-url", url, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "refused the API key (HTTP 401)" in err, err
    assert "PALIGN_JUDGE_API_KEY" in err and "sk-wrong" not in err
    assert not (folder / "judge").exists()
    # OPENAI_API_KEY is the fallback
    monkeypatch.delenv("PALIGN_JUDGE_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert (
        main(["judge", str(folder), "--judge-model", "judge-a", "--base-url", url, "--quiet"]) == 0
    )
    capsys.readouterr()
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(
        [
            "judge",
            str(folder),
            "--judge-model",
            "judge-a",
            "--no-cache",
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--retries",
            "1",
            "--backoff",
            "0.01",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot reach the judge endpoint" in err, err
    rc = main(["judge", str(tmp_path / "none"), "--judge-model", "x", "--base-url", url])
    assert rc == 2 and "holds no generations" in capsys.readouterr().err


def test_pairwise_both_orders(
    srv: tuple[str, ServerState], gen_folders, tmp_path: Path, papi: Dataset, papi_dir, capsys
) -> None:
    url, state = srv
    a = _copy(gen_folders["few-shot"], tmp_path / "a")
    b = gen_folders["vanilla"]

    def longer(body: dict[str, Any]) -> Reply:  # picks the longer response; ties -> A
        p = body["messages"][0]["content"]
        ra, rb = _field(p, "Response A"), _field(p, "Response B")
        c = "A" if len(ra) >= len(rb) else "B"
        return Reply(body=completion(f"Thinking.\n{c}\n{c}", body["model"]))

    state.handler = longer
    res = judge_pairwise(a, b, _judge(url), progress=False, dataset=papi)
    ra = {(r["person"], r["item"]): r["text"] for r in read_jsonl(a / "generations.jsonl")}
    rb = {(r["person"], r["item"]): r["text"] for r in read_jsonl(b / "generations.jsonl")}
    want = []
    for k in ra:
        la, lb = len(ra[k].strip()), len(rb[k].strip())
        want.append(1.0 if la > lb else 0.0 if la < lb else 0.5)  # equal: each order picks A
    assert len(state.requests) == 2 * len(ra) and res["n_pairs"] == len(ra)
    assert res["win_rate_a"]["mean"] == pytest.approx(np.mean(want), abs=1e-4)
    assert res["ties"] == sum(w == 0.5 for w in want)
    prompt = state.requests[0]["messages"][0]["content"]
    assert "[Person's profile]" in prompt and "Neuroticism:" in prompt
    # a judge that always picks the first position: every pair a tie, win rate 0.5
    state.handler = lambda body: Reply(body=completion("A\nA", body["model"]))
    res = judge_pairwise(
        a, b, _judge(url, tmp_path / "c-first"), name="first", progress=False, dataset=papi
    )
    assert res["win_rate_a"]["mean"] == 0.5 and res["first_position_rate"] == 1.0
    # the CLI: the first judge's answers come from the cache, no request is sent
    n = len(state.requests)
    argv = ["judge", str(a), "--versus", str(b), "--judge-model", "judge-a", "--base-url", url]
    assert main([*argv, "--data", str(papi_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "win rate of few-shot: " in out and f"cached {2 * len(ra)}" in out
    assert len(state.requests) == n


def test_agreement_between_two_judges(
    srv: tuple[str, ServerState], gen_folders, tmp_path: Path, capsys
) -> None:
    from scipy import stats

    url, state = srv
    folder = _copy(gen_folders["few-shot"], tmp_path / "g")
    state.handler = rubric_handler()
    judge_generations(folder, CachedJudge(OpenAIJudge("judge-a", url)), progress=False)
    judge_generations(folder, CachedJudge(OpenAIJudge("judge-b", url)), progress=False)
    f1, f2 = folder / "judge" / "judge-a.jsonl", folder / "judge" / "judge-b.jsonl"
    assert main(["judge-agreement", str(f1), str(f2), "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rows = read_jsonl(folder / "generations.jsonl")
    x = [scripted_score(r["statement"], r["text"].strip(), "judge-a") for r in rows]
    y = [scripted_score(r["statement"], r["text"].strip(), "judge-b") for r in rows]
    assert d["n_both_parsed"] == len(rows)
    assert d["exact_agreement"] == pytest.approx(np.mean(np.equal(x, y)), abs=1e-4)
    assert d["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-4)
    assert agreement(f1, f1)["exact_agreement"] == 1.0
    assert main(["judge-agreement", str(folder), str(f2)]) == 2


def test_request_object_is_the_cache_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path))
    j = CachedJudge(OpenAIJudge("m", "http://127.0.0.1:9/v1"))
    r = JudgeRequest("p")
    assert j.key(r) == j.key(JudgeRequest("p"))
    assert j.key(r) == CachedJudge(OpenAIJudge("m", "http://127.0.0.1:9/v1/")).key(r)
    assert j.key(r) != j.key(JudgeRequest("p", temperature=0.5))
    assert j.key(r) != CachedJudge(OpenAIJudge("m2", "http://127.0.0.1:9/v1")).key(r)
    # the same model name at another endpoint is another judge
    assert j.key(r) != CachedJudge(OpenAIJudge("m", "http://127.0.0.1:10/v1")).key(r)


def test_cache_is_per_endpoint_and_the_resolved_model_is_recorded(
    srv: tuple[str, ServerState], gen_folders, tmp_path: Path, capsys
) -> None:
    """Two endpoints serving the same model name do not share answers; the model that
    answered (``response.model``) is recorded per item and in the summary."""
    url, state = srv
    folder = _copy(gen_folders["vanilla"], tmp_path / "g")
    state.handler = rubric_handler(resolved="judge-a-2024-08-06")
    argv = ["judge", str(folder), "--judge-model", "judge-a", "--quiet", "--format", "json"]
    assert main([*argv, "--base-url", url]) == 0
    d = json.loads(capsys.readouterr().out)
    n = len(state.requests)
    assert n > 0 and d["judge"]["resolved_models"] == ["judge-a-2024-08-06"]
    assert d["judge"]["model"] == "judge-a"
    items = read_jsonl(folder / "judge" / "judge-a.jsonl")
    assert {i["judge_model"] for i in items} == {"judge-a-2024-08-06"}
    # the same server under another base URL (localhost instead of 127.0.0.1): not cached
    other = url.replace("127.0.0.1", "localhost")
    assert main([*argv, "--base-url", other]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["requests"]["cached"] == 0 and len(state.requests) == 2 * n
    assert main([*argv, "--base-url", url]) == 0  # the first endpoint again: all cached
    d = json.loads(capsys.readouterr().out)
    assert d["requests"]["cached"] == d["n_items"] and len(state.requests) == 2 * n
    assert d["judge"]["resolved_models"] == ["judge-a-2024-08-06"]


def test_default_timeout_is_the_same_in_python_cli_and_docs() -> None:
    import inspect

    from palign.cli import build_parser
    from palign.judge.client import DEFAULT_TIMEOUT

    py = inspect.signature(OpenAIJudge).parameters["timeout"].default
    parser = build_parser()
    defaults = [
        parser.parse_args(argv).timeout
        for argv in (
            ["judge", "d", "--judge-model", "m"],
            ["judge-validate", "--out", "o", "--generator", "g", "--judge-model", "m"],
        )
    ]
    doc = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text()
    m = re.findall(r"`--timeout`, default (\d+(?:\.\d+)?) s", doc)
    assert m, "docs/evaluation.md states the --timeout default"
    assert {py, *defaults, *map(float, m)} == {DEFAULT_TIMEOUT}


def test_rejections_are_one_line_errors(
    srv: tuple[str, ServerState], gen_folders, tmp_path: Path, capsys
) -> None:
    url, state = srv
    folder = _copy(gen_folders["vanilla"], tmp_path / "g")
    base = rubric_handler()

    def newer_model(body: dict[str, Any]) -> Reply:  # OpenAI's reasoning models
        if "max_tokens" in body:
            msg = "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead."
            return Reply(400, {"error": {"message": msg, "type": "invalid_request_error"}})
        if body["model"] != "judge-a":
            msg = f"The model `{body['model']}` does not exist"
            return Reply(404, {"error": {"message": msg, "type": "invalid_request_error"}})
        return base(body)

    state.handler = newer_model
    res = judge_generations(folder, _judge(url), progress=False)
    assert res["requests"]["errors"] == 0 and res["unparsed_rate"] == 0
    assert any("max_completion_tokens" in b for b in state.requests)
    argv = ["judge", str(folder), "--base-url", url, "--quiet", "--no-cache"]
    assert main([*argv, "--judge-model", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "answered 404 for model 'nope'" in err
    state.handler = lambda body: Reply(
        400, {"error": {"message": "logprobs are not supported", "type": "invalid_request_error"}}
    )
    assert main([*argv, "--judge-model", "judge-a"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 400" in err and "--no-logprobs" in err
