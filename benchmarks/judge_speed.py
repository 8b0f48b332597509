"""Judge speed: llama.cpp's OpenAI-compatible server vs the in-process transformers judge.

    python benchmarks/judge_speed.py --texts runs/kv/texts.jsonl --model smollm2
    python benchmarks/judge_speed.py --texts runs/kv/texts.jsonl --model qwen2.5-coder-1.5b \\
        --out benchmarks/results/judge_speed_qwen1.5b.json

Both judges read the same stance prompts (the known-answer texts written by ``palign
judge-validate``, score-first protocol, greedy, log-probabilities on, no cache) in one run,
one after the other: the transformers judge (:class:`palign.judge.client.LocalJudge`, the
alias's weights as palign loads them, ``--batch-size``) and ``python -m llama_cpp.server``
started here on loopback with the alias's GGUF file loaded as is (quantised, ``--logits_all
true``), asked through :class:`palign.judge.client.OpenAIJudge` (``--concurrency``). Reported:
seconds (model load and judging apart), texts per second, the ratio, and how often the two
judges' readings agree (the GGUF is quantised, so they need not be identical). Needs
``llama-cpp-python[server]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from palign.judge import prompts
from palign.judge.client import JudgeRequest, LocalJudge, OpenAIJudge
from palign.judge.generate import read_jsonl
from palign.judge.run import read_choice


def _requests(texts: list[dict[str, Any]]) -> list[JudgeRequest]:
    return [
        JudgeRequest(
            prompts.stance_prompt(t["statement"], t["text"], "score-first"),
            prompts.STANCE_CHOICES,
            prompts.SCORE_FIRST_MAX_TOKENS,
            0.0,
            0,
            True,
        )
        for t in texts
    ]


def _start_server(gguf: Path, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        "judge",
        "--logits_all",
        "true",
        "--n_ctx",
        "4096",
        "--n_threads",
        str(threads),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.monotonic() - t0 > 300:
            proc.terminate()
            raise SystemExit("llama_cpp.server not ready after 300 s")
        time.sleep(0.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--texts", required=True, help="texts.jsonl of a 'palign judge-validate' run")
    ap.add_argument("--model", default="smollm2", help="palign model alias with a GGUF file")
    ap.add_argument("--limit", type=int, default=None, help="only the first N texts")
    ap.add_argument("--batch-size", type=int, default=8, help="transformers judge batch")
    ap.add_argument("--concurrency", type=int, default=1, help="requests in flight (server)")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    args = ap.parse_args()

    import torch

    from palign.models.loading import alias_gguf, load_model

    texts = read_jsonl(Path(args.texts))[: args.limit]
    reqs = _requests(texts)
    res: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "texts": args.texts,
        "n": len(reqs),
        "model": args.model,
        "protocol": "score-first",
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
    }
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    lm = load_model(args.model)
    load_tf = time.perf_counter() - t
    t = time.perf_counter()
    local = LocalJudge(lm, batch_size=args.batch_size).complete_many(reqs)
    judge_tf = time.perf_counter() - t
    del lm
    gguf = alias_gguf(args.model)
    t = time.perf_counter()
    proc, url = _start_server(
        gguf, args.threads, Path(args.out or "judge_speed").with_suffix(".log")
    )
    load_cpp = time.perf_counter() - t
    try:
        t = time.perf_counter()
        remote = OpenAIJudge("judge", url, concurrency=args.concurrency, retries=0).complete_many(
            reqs
        )
        judge_cpp = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    a = [read_choice(r, prompts.STANCE_CHOICES, "score-first") for r in local]
    b = [read_choice(r, prompts.STANCE_CHOICES, "score-first") for r in remote]
    both = [(x["choice"], y["choice"]) for x, y in zip(a, b) if x["choice"] and y["choice"]]
    res.update(
        {
            "transformers": {
                "load_s": round(load_tf, 2),
                "judge_s": round(judge_tf, 2),
                "texts_per_s": round(len(reqs) / judge_tf, 3),
                "parsed": sum(x["choice"] is not None for x in a),
                "batch_size": args.batch_size,
            },
            "llama_cpp_server": {
                "gguf": gguf.name,
                "load_s": round(load_cpp, 2),
                "judge_s": round(judge_cpp, 2),
                "texts_per_s": round(len(reqs) / judge_cpp, 3),
                "parsed": sum(y["choice"] is not None for y in b),
                "errors": sum(r.error is not None for r in remote),
                "concurrency": args.concurrency,
                "threads": args.threads,
            },
            "speedup_llama_cpp_over_transformers": round(judge_tf / judge_cpp, 3),
            "readings_agree": round(sum(x == y for x, y in both) / len(both), 4) if both else None,
            "n_both_parsed": len(both),
        }
    )
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
