"""Settings and parts 2-5 of ``benchmarks/gpu_suite.py`` (serving, training, Ray, 4-bit);
see that file's docstring. Each part returns its JSON record; ``gpu_suite.main`` times it,
catches its errors and writes the results."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gpu_throughput as gt

PAPER_STEPS, PAPER_BATCH = 250, 16  # the paper's DPO/PPO recipe per person


@dataclass
class Settings:
    """Sizes of one run (GPU defaults; :meth:`smoke` for the CPU smoke)."""

    shape: str = "llama3-8b"
    budget_s: float = 540.0
    persons: int = 32  # grid and honest protocols
    person_batch: int = 8
    batch_size: int = 32
    max_items: int | None = None  # all 180 test items
    gen_items: int = 40  # original's subset (batches of gen_batch)
    gen_batch: int = 10
    palign_gen_items: int = 64  # palign --readout generate subset (batches of batch_size)
    sklearn_heads: int = 128
    honest_options: dict[str, Any] = field(default_factory=dict)
    streams: int = 32
    requests_per_stream: int = 4
    max_tokens: int = 32
    personalities: tuple[int, ...] = (1, 8, 64)
    solo_sample: int = 8
    train_steps: int = 4
    train_examples: int | None = None  # all of the person's pairs / prompts
    train_batch: int = 16
    num_generations: int = 8
    grpo_max_new_tokens: int = 15
    ray_shape: str = "tiny"
    ray_persons: int = 4
    ray_max_items: int = 12
    ray_options: tuple[str, ...] = ("--k", "8", "--alpha-grid", "0,2,4", "--folds", "2")
    fourbit_items: int = 12

    @classmethod
    def smoke(cls) -> Settings:
        """Tiny sizes: every code path once, on the CPU."""
        return cls(
            shape="tiny",
            budget_s=600.0,  # the smoke runs every part: no budget skips
            persons=1,
            person_batch=1,
            batch_size=16,
            max_items=3,
            gen_items=4,
            gen_batch=2,
            palign_gen_items=4,
            sklearn_heads=8,
            honest_options={"alpha_grid": [0.0, 4.0], "folds": 2},
            streams=32,
            requests_per_stream=1,
            max_tokens=4,
            solo_sample=8,
            train_steps=2,
            train_examples=8,
            train_batch=4,
            num_generations=2,
            grpo_max_new_tokens=3,
            ray_persons=2,
            ray_max_items=3,
            ray_options=("--k", "4", "--alpha-grid", "0,2", "--folds", "2"),
            fourbit_items=3,
        )


class Log:
    """Prints and keeps every line (written to ``gpu_suite.log``)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.lines.append(line)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


# --- part 2: serving ----------------------------------------------------------------------
PROMPTS = (
    "How do you spend a free evening?",
    "What do you do when plans change at the last minute?",
    "Describe yourself in one sentence.",
    "What makes a good friend?",
)


def personality_vectors(b: gt.Bench, m: int) -> list[torch.Tensor]:
    """``m`` PAS steering vectors fitted on random activations (alpha 4, K 16), on the device
    (the serving cost does not depend on what the vectors mean)."""
    from palign.steering import fit_pas

    arch = b.arch
    out = []
    for i in range(m):
        g = torch.Generator().manual_seed(i)
        acts = torch.randn(60, arch.n_layers, arch.n_heads, arch.head_dim, generator=g)
        ans = np.random.default_rng(i).choice([1, 2, 4, 5], size=30).astype(float)
        k = min(16, arch.n_layers * arch.n_heads)
        res = fit_pas(acts.to(b.dev), ans, arch, alpha=4.0, K=k)
        out.append(res.u.float().cpu())
    return out


def serve_cell(
    engine: Any,
    prompt_ids: list[list[int]],
    vecs: list[torch.Tensor],
    s: Settings,
    solo_sample: int | None = None,
) -> dict[str, Any]:
    """``s.streams`` closed-loop streams, each ``s.requests_per_stream`` greedy requests in turn;
    request ``g`` asks personality ``g mod M`` prompt ``(g // M) mod len(PROMPTS)``."""
    from palign.serve.engine import SamplingParams

    params = SamplingParams(max_tokens=s.max_tokens, temperature=0.0)
    m = len(vecs)
    lat: dict[int, float] = {}
    got: dict[int, list[int]] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def stream(c: int) -> None:
        for r in range(s.requests_per_stream):
            g = c * s.requests_per_stream + r
            t = time.perf_counter()
            try:
                (comp,) = engine.generate(
                    [prompt_ids[(g // m) % len(prompt_ids)]], params, u=vecs[g % m], timeout=600
                )
            except Exception as e:  # noqa: BLE001 - counted as lost
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                lat[g] = time.perf_counter() - t
                got[g] = comp.token_ids

    engine.stats["max_rows"] = 0
    threads = [threading.Thread(target=stream, args=(c,)) for c in range(s.streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    v = list(lat.values())
    tokens = sum(len(x) for x in got.values())
    # equal to solo: a sample of the requests, each served again alone (the engine is idle)
    n_req = s.streams * s.requests_per_stream
    k = s.solo_sample if solo_sample is None else solo_sample
    sample = sorted({int(x) for x in np.linspace(0, n_req - 1, min(k, n_req))}) if k else []
    equal = checked = 0
    for g in sample:
        if g not in got:
            continue
        (solo,) = engine.generate(
            [prompt_ids[(g // m) % len(prompt_ids)]], params, u=vecs[g % m], timeout=600
        )
        checked += 1
        equal += solo.token_ids == got[g]
    return {
        "personalities": m,
        "streams": s.streams,
        "requests": n_req,
        "completed": len(v),
        "lost": len(errors),
        "errors": errors[:3],
        "wall_s": round(wall, 3),
        "tokens": tokens,
        "tok_per_s": round(tokens / wall, 2),
        "req_per_s": round(len(v) / wall, 3),
        "p50_s": round(float(np.percentile(v, 50)), 4) if v else None,
        "p99_s": round(float(np.percentile(v, 99)), 4) if len(v) >= 100 else None,
        "p99_note": None if len(v) >= 100 else f"not stated: {len(v)} samples (< 100)",
        "max_batch_rows": engine.stats["max_rows"],
        "solo_checked": checked,
        "solo_equal": equal,
    }


def part_serve(b: gt.Bench, s: Settings, deadline: float, log: Log) -> dict[str, Any]:
    from palign.chat import chat_ids
    from palign.serve.engine import Engine

    vecs = personality_vectors(b, max(s.personalities))
    prompt_ids = [chat_ids(b.lm, [{"role": "user", "content": p}]) for p in PROMPTS]
    gt.reset_peak(b.dev)
    cells = []
    with Engine(b.lm, max_batch=max(64, s.streams), max_queue=4 * s.streams) as engine:
        serve_cell(engine, prompt_ids, vecs[:8], s, solo_sample=0)  # warm-up, not recorded
        for m in s.personalities:
            if time.perf_counter() > deadline and cells:
                cells.append({"personalities": m, "skipped": "time budget"})
                continue
            cell = serve_cell(engine, prompt_ids, vecs[:m], s)
            cells.append(cell)
            log(
                f"serve {m:>2} personalities x {s.streams} streams: {cell['tok_per_s']:.1f} tok/s, "
                f"p50 {cell['p50_s']} s, p99 {cell['p99_s']} s, batch <= {cell['max_batch_rows']}, "
                f"solo-equal {cell['solo_equal']}/{cell['solo_checked']}"
            )
    done = [c for c in cells if "tok_per_s" in c]
    one = next((c for c in done if c["personalities"] == 1), None)
    return {
        "engine": "palign.serve.engine.Engine (the engine behind palign serve), no HTTP",
        "max_tokens": s.max_tokens,
        "requests_per_stream": s.requests_per_stream,
        "prompts": list(PROMPTS),
        "vectors": "PAS on random activations, alpha 4, K 16, steering at all positions",
        "cells": cells,
        "ratio_mixed_vs_one": {
            str(c["personalities"]): round(c["tok_per_s"] / one["tok_per_s"], 3)
            for c in done
            if one and c is not one
        },
        "solo_equal_all": all(c["solo_equal"] == c["solo_checked"] > 0 for c in done),
        "lost_total": sum(c["lost"] for c in done),
        "peak_gb": gt.peak_gb(b.dev),
    }


# --- part 3: training step cost -----------------------------------------------------------
def step_timer(dev: torch.device) -> Any:
    """A ``TrainerCallback`` recording the seconds of every optimiser step (synchronised)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[float] = []
            self.t = 0.0

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            gt.sync(dev)
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            gt.sync(dev)
            self.steps.append(time.perf_counter() - self.t)

    return StepTimer()


def train_one(
    b: gt.Bench, s: Settings, trainer: Any, examples: list[Any], cfg: Any, folder: Path
) -> dict[str, Any]:
    """One person's LoRA training of ``s.train_steps`` steps, every step timed."""
    gt.reset_peak(b.dev)
    timer = step_timer(b.dev)
    t = time.perf_counter()
    res = trainer(
        b.lm, examples[: s.train_examples], cfg, folder, progress=False, callbacks=[timer]
    )
    total = time.perf_counter() - t
    steps = timer.steps
    steady = float(np.median(steps[1:] if len(steps) > 1 else steps))
    overhead = max(0.0, total - sum(steps))
    return {
        "config": cfg.to_dict(),
        "step_s": [round(x, 4) for x in steps],
        "s_per_step": round(steady, 4),
        "s_per_step_note": "median of the steps after the first (warm-up)",
        "overhead_s": round(overhead, 2),
        "total_s": round(total, 2),
        "examples": res.n_examples,
        "projected_paper_recipe_s_per_person": round(steady * PAPER_STEPS + overhead, 1),
        "peak_gb": gt.peak_gb(b.dev),
    }


def part_train(
    b: gt.Bench, s: Settings, deadline: float, log: Log, pas_per_person: float | None
) -> dict[str, Any]:
    from palign.train import (
        DPOTrainConfig,
        GRPOTrainConfig,
        dpo_pairs,
        rl_prompts,
        train_dpo,
        train_grpo,
    )

    person = b.ds.persons[0]
    out: dict[str, Any] = {
        "paper_recipe": f"{PAPER_STEPS} steps x batch {PAPER_BATCH}",
        "batch_note": None
        if s.train_batch == PAPER_BATCH
        else f"steps timed at batch {s.train_batch} (reduced), so the projection is not the "
        "paper recipe's cost",
        "lora": "r 16, alpha 100, q/k/v/o_proj (palign.train defaults)",
    }
    jobs = (
        (
            "dpo",
            lambda: train_dpo,
            lambda: dpo_pairs(b.tok, b.ds, person),
            # select none: every step is timed alone (the held-out reads of palign's default
            # selection are 5 readouts per person, not part of a step)
            DPOTrainConfig(
                steps=s.train_steps,
                batch=s.train_batch,
                micro_batch=s.train_batch,
                select="none",
            ),
        ),
        (
            "grpo",
            lambda: train_grpo,
            lambda: rl_prompts(b.tok, b.ds, person),
            GRPOTrainConfig(
                steps=s.train_steps,
                batch=s.train_batch,
                micro_batch=s.train_batch,
                num_generations=s.num_generations,
                max_new_tokens=s.grpo_max_new_tokens,
                select="none",
            ),
        ),
    )
    with tempfile.TemporaryDirectory(prefix="palign-suite-train-") as tmp:
        for name, trainer, examples, cfg in jobs:
            if time.perf_counter() > deadline:
                out[name] = {"skipped": "time budget"}
                continue
            try:
                out[name] = train_one(b, s, trainer(), examples(), cfg, Path(tmp) / name)
            except Exception as e:  # noqa: BLE001 - one trainer failing (OOM) spares the other
                out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                log(f"{name}: {out[name]['error']}")
                gc.collect()
                if b.gpu:
                    torch.cuda.empty_cache()
                continue
            log(
                f"{name}: {out[name]['s_per_step']:.3f} s/step (batch {s.train_batch}) -> paper "
                f"recipe {out[name]['projected_paper_recipe_s_per_person']:.0f} s/person "
                "(projected)"
            )
    if pas_per_person:
        out["pas_s_per_person"] = round(pas_per_person, 3)
        out["pas_source"] = "part pas: honest pas+few-shot, all positions, same run"
        for name in ("dpo", "grpo"):
            if "projected_paper_recipe_s_per_person" in out.get(name, {}):
                out[f"{name}_vs_pas"] = round(
                    out[name]["projected_paper_recipe_s_per_person"] / pas_per_person, 1
                )
    return out


# --- part 4: Ray ------------------------------------------------------------------------------
def part_ray(
    s: Settings, dev: torch.device, data: str | None, tok: Any, log: Log
) -> dict[str, Any]:
    from palign.cli import main as palign
    from scale_out import person_texts

    tmp = Path(tempfile.mkdtemp(prefix="palign-suite-ray-"))
    model, _ = gt.build_model(s.ray_shape, torch.device("cpu"), torch.float32)
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    del model
    argv = [
        "eval",
        "--method",
        "pas",
        "--model",
        str(tmp / "model"),
        "--persons",
        str(s.ray_persons),
        "--person-batch",
        "1",
        "--max-items",
        str(s.ray_max_items),
        "--device",
        dev.type,
        "--quiet",
        "--format",
        "json",
        *s.ray_options,
        *(["--data", data] if data else []),
    ]
    runs: dict[str, Any] = {}
    for name, extra in (("single", []), ("ray_1", ["--workers", "1"])):
        buf = io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            rc = palign([*argv, "--out", str(tmp / name), *extra])
        wall = time.perf_counter() - t
        if rc != 0:
            raise RuntimeError(f"palign eval ({name}) exited {rc}")
        res = json.loads(buf.getvalue())
        runs[name] = {"wall_s": round(wall, 2), "scale": res.get("scale")}
        log(f"ray part: {name} in {wall:.1f} s")
    ref, got = person_texts(tmp / "single"), person_texts(tmp / "ray_1")
    same = sum(got.get(p) == ref[p] for p in ref)
    resources = (runs["ray_1"]["scale"] or {}).get("resources", {})
    return {
        "command": "palign " + " ".join(argv).replace(str(tmp), "TMP") + " [--workers 1]",
        "model": f"random {s.ray_shape}-shape Llama saved as a model folder",
        "runs": runs,
        "actor_path": "gpu" if resources.get("num_gpus") else "cpu",
        "persons": len(ref),
        "identical_persons": same,
        "identical": same == len(ref) == len(got) > 0,
    }


# --- part 5: 4-bit ------------------------------------------------------------------------
def part_4bit(b: gt.Bench, s: Settings, log: Log) -> dict[str, Any]:
    """Save the bench model, free it, load it through ``load_model(load_in_4bit=True)``, read."""
    from palign.models.loading import load_model
    from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT
    from palign.models.readout import ReadRequest, option_probs

    bf16_gb = round(sum(p.numel() * p.element_size() for p in b.lm.model.parameters()) / 1e9, 2)
    tmp = Path(tempfile.mkdtemp(prefix="palign-suite-4bit-"))
    t = time.perf_counter()
    b.lm.model.save_pretrained(tmp / "model")
    b.tok.save_pretrained(tmp / "model")
    save_s = time.perf_counter() - t
    b.lm.model.to("meta")  # the last part: free the bf16 copy
    b.acts_dev = b.acts
    gc.collect()
    torch.cuda.empty_cache()
    gt.reset_peak(b.dev)
    base = torch.cuda.memory_allocated(b.dev)
    t = time.perf_counter()
    lm4 = load_model(str(tmp / "model"), device="cuda", dtype="bfloat16", load_in_4bit=True)
    load_s = time.perf_counter() - t
    weights_gb = round((torch.cuda.memory_allocated(b.dev) - base) / 1e9, 2)
    reqs = [ReadRequest(NEUTRAL_SYSTEM_PROMPT, st, None) for st in b.statements[: s.fourbit_items]]
    with gt.Timer(b.dev) as tr:
        probs = option_probs(lm4, reqs, batch_size=s.batch_size).probs
    log(f"4bit: weights {weights_gb} GB (bf16 {bf16_gb} GB), load {load_s:.1f} s")
    return {
        "path": "load_model(folder, load_in_4bit=True): bitsandbytes NF4, double quant, "
        "bf16 compute (what --load-in-4bit does)",
        "save_bf16_folder_s": round(save_s, 1),
        "load_s": round(load_s, 1),
        "bf16_weights_gb": bf16_gb,
        "weights_4bit_gb": weights_gb,
        "ratio_4bit_vs_bf16": round(weights_gb / bf16_gb, 3) if bf16_gb else None,
        "read_items": len(reqs),
        "read_s": round(tr.s, 3),
        "probs_finite": bool(np.isfinite(probs).all()),
        "peak_gb": gt.peak_gb(b.dev),
    }
