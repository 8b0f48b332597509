"""An independent OpenAI-compatible server as judge: llama.cpp's (``llama-cpp-python[server]``).

The test starts ``python -m llama_cpp.server`` on loopback with SmolLM2's GGUF (the file the
``smollm2`` alias ships, quantised, loaded as is) and ``--logits_all true`` (log-probabilities
of generated tokens need it), waits until ``/v1/models`` answers, and runs ``palign judge``
against it with the score-first protocol: the judgements parse, the weighted score is read
from the server's log-probabilities at the first token, the answering model is recorded, and
the token offsets palign computes spell the server's text. Skipped where ``llama_cpp`` is
not installed (it is built from source: see docs/evaluation.md).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("llama_cpp.server")

from palign.cli import main  # noqa: E402
from palign.judge.client import JudgeRequest, OpenAIJudge  # noqa: E402
from palign.judge.generate import GenerateConfig, read_jsonl, run_generate  # noqa: E402
from palign.models.loading import LoadedModel, alias_gguf  # noqa: E402

ALIAS = "smollm2-gguf"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free loopback port; yields its base URL."""
    gguf = alias_gguf("smollm2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        ALIAS,
        "--logits_all",
        "true",
        "--n_ctx",
        "4096",
        "--n_threads",
        "1",  # one thread: llama.cpp's spinning workers stall on a shared, busy machine
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"llama_cpp.server exited ({proc.returncode}): {log.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > 180:
                pytest.fail(f"llama_cpp.server not ready after 180 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_palign_judge_against_llama_cpp_server(
    llama_server: str, tiny_lm: LoadedModel, papi, tmp_path: Path, monkeypatch, capsys
) -> None:
    from tests.test_runs import small

    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PALIGN_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ds = small(papi, 3)
    folder = tmp_path / "gen"
    cfg = GenerateConfig(
        "few-shot", model="tiny", persons=[ds.persons[0].id], max_new_tokens=8, temperature=0.0
    )
    run_generate(cfg, folder, lm=tiny_lm, dataset=ds, progress=False)
    rows = read_jsonl(folder / "generations.jsonl")
    argv = ["judge", str(folder), "--judge-model", ALIAS, "--base-url", llama_server]
    argv += ["--timeout", "600"]
    assert main([*argv, "--quiet", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["requests"]["errors"] == 0 and d["n_items"] == len(rows)
    assert d["protocol"] == "score-first" and d["judge"]["base_url"] == llama_server
    assert d["judge"]["resolved_models"]  # the server names the model that answered
    items = read_jsonl(folder / "judge" / f"{ALIAS}.jsonl")
    parsed = [i for i in items if i["score"] is not None]
    assert parsed, [i["judgement"] for i in items]
    for i in parsed:  # log-probabilities came back and were read at the first token
        assert i["choice_offset"] is not None and i["weighted"] is not None
        assert 1 <= i["weighted"] <= 6 and 0 < i["choice_mass"] <= 1 + 1e-6
    # the offsets palign computes from the server's tokens spell the server's text
    resp = OpenAIJudge(ALIAS, llama_server, retries=0, timeout=600).complete_many(
        [JudgeRequest("Count from 1 to 6, one number per line.", max_tokens=32)]
    )[0]
    assert resp.error is None and resp.candidates, resp.text
    for c in resp.candidates:
        assert resp.text[c["offset"] : c["offset"] + len(c["token"])] == c["token"]
