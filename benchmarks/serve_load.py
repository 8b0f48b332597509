"""Load test of ``palign serve`` over loopback: N concurrent clients x M personalities.

    python benchmarks/serve_load.py                       # embedded SmolLM2 on CPU (bounded)
    python benchmarks/serve_load.py --clients 1,4 --personalities 1,8 --requests 2   # quicker
    python benchmarks/serve_load.py --shape llama3-8b --device cuda   # 8B shape, random weights

A real server (uvicorn on 127.0.0.1, :func:`palign.serve.testing.serve_in_thread`) and the
official ``openai`` client in N threads, each sending R greedy chat requests one after the
other. Request ``g`` (client ``c``, turn ``r``: ``g = c * R + r``) asks personality
``g mod M`` one of a few prompts. For every (clients, personalities) cell it reports
requests/s, generated tokens/s, p50/p99 latency and the largest batch the engine ran;
``M = 0`` is the bare base model (no steering) and ``M = 1`` the "same load against one
personality" reference, so the mixing cost is the ratio of a cell's req/s to the M = 1 cell
with the same clients, measured in the same run.

Every response is checked against its (personality, prompt) solo output, obtained first by
sending that request alone to the same server: a response that differs (or fails) counts as
mixed up (or lost). Adapters are PAS adapters fitted on random activations (alpha 4, K 16):
the serving cost does not depend on what the vectors mean.

Bounded: 3 x 4 cells of at most 16 x R requests with ``--max-tokens`` tokens each. JSON goes
to ``--out`` (default ``benchmarks/results/serve_load_<device>.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
PROMPTS = (
    "How do you spend a free evening?",
    "What do you do when plans change at the last minute?",
    "Describe yourself in one sentence.",
    "What makes a good friend?",
)

P99_MIN = 100  # latencies needed before a p99 is reported


def make_adapters(lm: Any, root: Path, m: int, seed: int = 0) -> list[str]:
    """``m`` PAS adapters fitted on random activations (shape-correct for ``lm``)."""
    from palign.steering import fit_pas, resolve_arch, save_adapter

    arch = resolve_arch(lm.model)
    names = []
    for i in range(m):
        g = torch.Generator().manual_seed(seed + i)
        acts = torch.randn(60, arch.n_layers, arch.n_heads, arch.head_dim, generator=g)
        ans = np.random.default_rng(seed + i).choice([1, 2, 4, 5], size=30).astype(float)
        res = fit_pas(acts, ans, arch, alpha=4.0, K=min(16, arch.n_layers * arch.n_heads))
        name = f"p{i:02d}"
        save_adapter(
            root / name, res, model_id=lm.model_id, arch=arch, revision=lm.revision,
            inventory="ipip-neo", semantics="agreement", person=name,
            extra={"steer_position": "all"},
        )  # fmt: skip
        names.append(name)
    return names


def load(args: argparse.Namespace) -> Any:
    from palign.models.loading import LoadedModel, load_model, resolve_device, resolve_dtype

    if args.shape == "smollm2":
        return load_model("smollm2", device=args.device, dtype=args.dtype)
    from transformers import LlamaConfig, LlamaForCausalLM

    dev = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, dev)
    tok = load_model("smollm2").tokenizer
    d = json.loads((HERE / "configs" / f"{args.shape}-shape.json").read_text())
    d = {k: v for k, v in d.items() if k not in ("model_type", "architectures")}
    d["vocab_size"] = len(tok)  # generated ids must decode with the tokenizer we have
    d["pad_token_id"] = tok.pad_token_id
    d["eos_token_id"] = tok.eos_token_id
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            model = LlamaForCausalLM(LlamaConfig(**d)).eval()
    finally:
        torch.set_default_dtype(old)
    name = f"random-{args.shape}"
    return LoadedModel(model, tok, name, name, None, dev, dtype)


def run_cell(
    url: str, models: list[str], clients: int, requests: int, max_tokens: int,
    solo: dict[tuple[str, str], str], engine: Any,
) -> dict[str, Any]:  # fmt: skip
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    lat: list[float] = []
    toks: list[int] = []
    wrong = lost = 0
    lock = threading.Lock()
    engine.stats["max_rows"] = 0

    def worker(c: int) -> None:
        nonlocal wrong, lost
        for r in range(requests):
            g = c * requests + r
            model = models[g % len(models)]
            prompt = PROMPTS[(g // len(models)) % len(PROMPTS)]
            t = time.perf_counter()
            try:
                out = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}],
                    max_tokens=max_tokens, temperature=0,
                )  # fmt: skip
            except openai.APIError:
                with lock:
                    lost += 1
                continue
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
                toks.append(out.usage.completion_tokens)
                if out.choices[0].message.content != solo[(model, prompt)]:
                    wrong += 1

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n = len(lat)
    return {
        "clients": clients,
        "requests": clients * requests,
        "completed": n,
        "lost": lost,
        "mixed_up": wrong,
        "wall_s": round(wall, 3),
        "req_per_s": round(n / wall, 3),
        "tok_per_s": round(sum(toks) / wall, 2),
        "tokens": int(sum(toks)),
        "p50_s": round(float(np.percentile(lat, 50)), 3) if lat else None,
        # a 99th percentile of fewer than 100 latencies is just the maximum: not reported
        "p99_s": round(float(np.percentile(lat, 99)), 3) if len(lat) >= P99_MIN else None,
        "max_batch_rows": engine.stats["max_rows"],
    }


def _p99(cell: dict[str, Any]) -> str:
    return "-" if cell["p99_s"] is None else f"{cell['p99_s']:.2f}s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="smollm2", help="smollm2 (embedded) or llama3-8b, tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--personalities", default="0,1,8,64", help="0 = the bare base model")
    ap.add_argument("--requests", type=int, default=2, help="requests per client (sequential)")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads of the engine")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from palign.serve import create_app
    from palign.serve.app import ServeConfig
    from palign.serve.testing import serve_in_thread

    clients = [int(x) for x in args.clients.split(",")]
    persons = [int(x) for x in args.personalities.split(",")]
    lm = load(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    res: dict[str, Any] = {
        "benchmark": "serve_load",
        "model": lm.model_id,
        "revision": lm.revision,
        "shape": args.shape,
        "device": str(lm.device),
        "dtype": str(lm.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "requests_per_client": args.requests,
        "max_tokens": args.max_tokens,
        "prompts": list(PROMPTS),
        "adapters": "PAS on random activations, alpha 4, K 16, seeds 0..M-1",
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "cells": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        names = make_adapters(lm, Path(tmp), max(persons))
        cfg = ServeConfig(served_model_name="base", max_batch=64, max_queue=1024,
                          threads=args.threads)  # fmt: skip
        app = create_app(lm, [tmp], cfg)
        engine = app.state.palign.engine
        with serve_in_thread(app) as url:
            import openai

            client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
            solo: dict[tuple[str, str], str] = {}
            t_solo = time.perf_counter()
            for m in persons:
                models = ["base"] if m == 0 else [f"base:{n}" for n in names[:m]]
                for c in clients:
                    for g in range(c * args.requests):
                        key = (models[g % len(models)], PROMPTS[(g // len(models)) % len(PROMPTS)])
                        if key not in solo:
                            out = client.chat.completions.create(
                                model=key[0], messages=[{"role": "user", "content": key[1]}],
                                max_tokens=args.max_tokens, temperature=0,
                            )  # fmt: skip
                            solo[key] = out.choices[0].message.content
            res["solo_requests"] = len(solo)
            res["solo_s"] = round(time.perf_counter() - t_solo, 2)
            print(f"{len(solo)} solo references in {res['solo_s']:.1f} s", flush=True)
            for c in clients:
                for m in persons:
                    models = ["base"] if m == 0 else [f"base:{n}" for n in names[:m]]
                    cell = run_cell(url, models, c, args.requests, args.max_tokens, solo, engine)
                    cell["personalities"] = m
                    res["cells"].append(cell)
                    print(
                        f"clients {c:>3} personalities {m:>3}: {cell['req_per_s']:7.2f} req/s "
                        f"{cell['tok_per_s']:8.1f} tok/s p50 {cell['p50_s']:.2f}s p99 "
                        f"{_p99(cell)} batch<={cell['max_batch_rows']:>3} "
                        f"lost {cell['lost']} mixed {cell['mixed_up']}",
                        flush=True,
                    )
    by = {(x["clients"], x["personalities"]): x for x in res["cells"]}
    res["mixing_cost"] = [
        {
            "clients": c,
            "personalities": m,
            "req_per_s_ratio_vs_one": round(by[(c, m)]["req_per_s"] / by[(c, 1)]["req_per_s"], 3),
        }
        for c in clients
        for m in persons
        if (c, 1) in by and m != 1
    ]
    res["lost_total"] = sum(x["lost"] for x in res["cells"])
    res["mixed_up_total"] = sum(x["mixed_up"] for x in res["cells"])
    out = Path(args.out or HERE / "results" / f"serve_load_{lm.device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"lost {res['lost_total']}, mixed up {res['mixed_up_total']}; wrote {out}")
    return 0 if res["lost_total"] == 0 and res["mixed_up_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
