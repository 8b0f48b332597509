"""One prepared GPU run that measures every GPU claim of palign, side by side in one run.

    python benchmarks/gpu_suite.py --data PAPI --tokenizer DIR --out docs/results  # GPU, <= 9 min
    python benchmarks/gpu_suite.py --smoke              # CPU, tiny random model, every part (CI)

The model is a Llama-3-8B-shaped ``LlamaForCausalLM`` with RANDOM weights in bf16
(``benchmarks/configs/llama3-8b-shape.json``; the device machine has no model hub), token ids
from a local tokenizer (the embedded SmolLM2's, or ``--tokenizer DIR``). Timings depend on
the shape, dtype and token counts, not on the weight values; no answer quality is measured.
Parts (each in its own try/except: a failing part records its error, the rest still run):

1. ``pas``: PAS speed like for like, with the functions of ``benchmarks/gpu_throughput.py``:
   the original's procedure re-stated faithfully (6 alphas x 180 items of 15-token greedy
   generation in batches of 10 with the person's few-shot prompt, o_proj bias,
   ``empty_cache`` per step, scikit-learn probes; timed on a subset, projected) vs palign
   ``pas+few-shot`` at all positions on the same grid (logits readout), vs palign's honest
   ``pas+few-shot`` (alpha by k-fold CV on the shown items), vs palign with ``--readout
   generate`` (the original's decoding; subset, projected), vs ``pas`` at all positions.
   Persons measured are stated; 300 persons is a projection. Peak GPU memory of each.
2. ``serve``: ``palign serve``'s engine (:class:`palign.serve.engine.Engine`) with 1, 8 and
   64 personalities mixed in one batch, N concurrent closed-loop streams: tokens/s, p50/p99
   latency (p99 only with >= 100 samples), greedy output equal to the same request served
   alone (checked on a sample, token ids), ratio mixed / one personality.
3. ``train``: seconds per DPO and per GRPO step (LoRA, the paper's batch 16) on the same
   model, and the paper's recipe (250 steps) projected per person next to PAS's per person.
4. ``ray``: a small ``palign eval --workers 1`` (one Ray actor; one GPU when the machine has
   one) vs the same ``palign eval`` in one process: per-person files identical.
5. ``4bit``: the ``--load-in-4bit`` path (:func:`palign.models.loading.load_model` with
   bitsandbytes NF4) loads the same 8B-shaped weights and reads; memory stated. Skipped, with
   the reason recorded, without CUDA or bitsandbytes.

A global time budget (``--budget-s``, default 540 s on a GPU) keeps the run within 9 minutes:
the PAS variants stop after the person group that passes 1.5x their share, and a part that no
longer fits is skipped with the reason recorded. ``OUT/gpu_suite.json`` is rewritten after
every part (and ``gpu_suite.md``, the page, and ``gpu_suite.log``), so a killed run keeps what
finished. ``--smoke`` runs every part on the CPU with a tiny random Llama (about 40 s of CPU
time; about a minute on a quiet 2-core machine, several on a busy one): proof that every
part runs and that the equality checks hold, not a speed claim; it exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gpu_suite_page  # noqa: E402
import gpu_throughput as gt  # noqa: E402  (benchmarks/ is not a package)
from gpu_suite_parts import (  # noqa: E402
    Log,
    Settings,
    part_4bit,
    part_ray,
    part_serve,
    part_train,
)

PARTS = ("pas", "serve", "train", "ray", "4bit")


# expected seconds of each part on one H100 (an EXPECTATION from the sizes, not a
# measurement; also the least time a part needs before it is started)
EXPECTED_H100_S = {"setup": 30, "pas": 240, "serve": 60, "train": 80, "ray": 50, "4bit": 70}
SMOKE_NEED_S = {"setup": 5, "pas": 20, "serve": 5, "train": 15, "ray": 15, "4bit": 1}


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    """Installed versions (package metadata: nothing heavy is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "peft", "ray", "bitsandbytes", "palign"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


# --- part 1: PAS speed, like for like ---------------------------------------------------------
def part_pas(b: gt.Bench, s: Settings, deadline: float, log: Log) -> dict[str, Any]:
    """The original (faithful re-statement) vs palign's variants, same model, same run."""
    from palign.methods.few_shot import few_shot_prompt
    from palign.methods.pas import PAS, PASFewShot

    dev, n_items, A = b.dev, len(b.items), len(gt.ALPHAS)
    persons = b.ds.persons[: s.persons]
    out: dict[str, Any] = {
        "test_items": n_items,
        "alphas": list(gt.ALPHAS),
        "capture_s": round(b.capture_s, 3),
        "fewshot_prompt_tokens": len(
            b.tok(few_shot_prompt(b.inv, persons[0], "agreement")).input_ids
        ),
        "memory_budget": {
            "readout_materialised_caches_gb": round((8 << 30) / 1e9, 2) if b.gpu else None,
            "pas_kv_store_gb": round((8 << 30) / 1e9, 2),
            "note": "palign bounds the prefix caches its readout materialises per forward (8 GiB "
            "on a GPU) and a method's KVStore (8 GiB); peak_gb - weights_gb (part setup) is "
            "what each variant used beyond the weights",
        },
    }
    out["fit_s_median"] = round(gt.fit_seconds(b, persons[:5]), 4)
    # the part's time is shared by the four timed variants; the original and the generate
    # readout are fixed-size subsets, so they go first
    variants: dict[str, Any] = {}

    def project(per_person: float) -> float:
        return round(b.capture_s + per_person * 300, 1)

    # original, faithful re-statement: probes (sampled heads) + generation subset, projected
    gt.reset_peak(dev)
    sk_s, n_sk = gt.sklearn_probe_seconds(b, persons[0], s.sklearn_heads)
    per_item, n_gen = gt.original_seconds_per_item(b, persons[0], s.gen_items, s.gen_batch)
    orig_person = per_item * A * n_items + sk_s
    variants["original"] = {
        "what": "original procedure re-stated faithfully: 6 alphas x test items, 15-token greedy "
        f"generation in batches of {s.gen_batch}, few-shot prompt, o_proj bias, empty_cache per "
        "step, one scikit-learn probe per head",
        "measured": f"{n_gen} generated items of one person (alpha 4) + {n_sk} probes; projected",
        "s_per_item": round(per_item, 4),
        "sklearn_probes_s_per_person": round(sk_s, 2),
        "s_per_person": round(orig_person, 2),
        "projected_300_s": project(orig_person),
        "peak_gb": gt.peak_gb(dev),
    }
    log(f"original: {per_item * 1000:.1f} ms/item, {orig_person:.1f} s/person (projected)")

    # palign --readout generate: the original's decoding through palign's readout, projected
    gt.reset_peak(dev)
    per_read, n_read = gt.palign_generate_seconds_per_readout(
        b, persons[0], s.palign_gen_items, s.batch_size
    )
    gen_person = per_read * A * n_items + out["fit_s_median"]
    variants["palign_generate"] = {
        "what": "palign pas+few-shot with --readout generate (15 greedy tokens, all positions, "
        f"batches of {s.batch_size}) on the same 6 alphas x test items",
        "measured": f"{n_read} readouts of one person over the 6 alphas; projected",
        "s_per_readout": round(per_read, 4),
        "s_per_person": round(gen_person, 2),
        "projected_300_s": project(gen_person),
        "peak_gb": gt.peak_gb(dev),
    }
    log(f"palign generate readout: {per_read * 1000:.1f} ms/readout, {gen_person:.1f} s/person")

    # the person-count variants share what is left of the part's time
    runs: list[tuple[str, str, Callable[[float], tuple[float, int, list[float] | None]]]] = [
        (
            "grid_fewshot_all",
            "palign pas+few-shot, all positions, logits readout, the original's grid (6 alphas x "
            "test items, no alpha selection): like for like",
            lambda dl: (
                *gt.grid_seconds(b, persons, "all", True, None, s.person_batch, deadline=dl),
                None,
            ),
        ),
        (
            "honest_fewshot_all",
            "palign pas+few-shot, all positions, alpha by k-fold CV on the shown items, then the "
            "test items (palign eval's protocol)",
            lambda dl: gt.honest_seconds(
                b, PASFewShot, persons, s.person_batch, s.honest_options, deadline=dl
            ),
        ),
        (
            "honest_pas_all",
            "palign pas (neutral prompt), all positions, alpha by k-fold CV, then the test items",
            lambda dl: gt.honest_seconds(
                b, PAS, persons, s.person_batch, s.honest_options, deadline=dl
            ),
        ),
    ]
    for i, (name, what, fn) in enumerate(runs):
        # a variant stops after the person group that passes 1.5x its share of the part's time
        share = 1.5 * (deadline - time.perf_counter()) / (len(runs) - i)
        gt.reset_peak(dev)
        secs, n, alphas = fn(time.perf_counter() + share)
        per = secs / n
        v: dict[str, Any] = {
            "what": what,
            "persons_measured": n,
            "seconds": round(secs, 3),
            "s_per_person": round(per, 3),
            "persons_per_min": round(60 / per, 1),
            "projected_300_s": project(per),
            "peak_gb": gt.peak_gb(dev),
        }
        if alphas is not None:
            v["alphas_chosen"] = alphas
        variants[name] = v
        log(f"{name}: {n} persons in {secs:.1f} s -> 300 in {v['projected_300_s'] / 60:.1f} min")
    out["variants"] = variants
    orig = variants["original"]["projected_300_s"]
    out["ratios"] = {
        "like_for_like": round(orig / variants["grid_fewshot_all"]["projected_300_s"], 2),
        "honest_fewshot": round(orig / variants["honest_fewshot_all"]["projected_300_s"], 2),
        "with_generate_readout": round(orig / variants["palign_generate"]["projected_300_s"], 2),
        "note": "original / palign, projected 300-person times, same device and run; "
        "with_generate_readout: palign with the original's decoding (no prefix shared)",
    }
    return out


# --- the run ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU smoke: tiny random model, tiny sizes")
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    ap.add_argument("--data", default=None, help="PAPI folder (default: $PALIGN_DATA, ...)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: SmolLM2's)")
    ap.add_argument("--out", default=None, help="folder for gpu_suite.json/.md/.log")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    ap.add_argument("--budget-s", type=float, default=None, help="time budget of the whole run")
    ap.add_argument("--persons", type=int, default=None, help="persons of the PAS variants")
    args = ap.parse_args(argv)

    s = Settings.smoke() if args.smoke else Settings()
    if args.budget_s:
        s.budget_s = args.budget_s
    if args.persons:
        s.persons = args.persons
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part {bad[0]!r}; use some of {','.join(PARTS)}")
    dev = torch.device("cpu") if args.smoke else gt.pick_device(args.device)
    default_out = (
        HERE / "results" / "gpu_suite_smoke" if args.smoke else HERE.parent / "docs" / "results"
    )
    out_dir = Path(args.out) if args.out else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_suite.log").write_text("")
    log = Log(out_dir / "gpu_suite.log")
    need = SMOKE_NEED_S if args.smoke else EXPECTED_H100_S
    t_all = time.perf_counter()
    end = t_all + s.budget_s
    res: dict[str, Any] = {
        "benchmark": "gpu_suite",
        "command": "python benchmarks/gpu_suite.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "smoke": bool(args.smoke),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device_name(dev),
        "device_type": dev.type,
        "weights": "random (no model hub on the device machine): LlamaForCausalLM of "
        f"benchmarks/configs/{s.shape}-shape.json, torch.manual_seed(0)",
        "shape": s.shape,
        "versions": versions(),
        "settings": asdict(s),
        "expected_h100_s": EXPECTED_H100_S,
        "parts": {},
    }

    def save() -> None:
        res["elapsed_s"] = round(time.perf_counter() - t_all, 1)
        tmp = out_dir / "gpu_suite.json.tmp"
        tmp.write_text(json.dumps(res, indent=1, default=str) + "\n")
        os.replace(tmp, out_dir / "gpu_suite.json")
        gpu_suite_page.write_page(res, out_dir / "gpu_suite.md")

    def run(name: str, fn: Callable[[], dict[str, Any]], ok: bool = True, why: str = "") -> None:
        left = end - time.perf_counter()
        if not ok:
            res["parts"][name] = {"status": "skipped", "reason": why}
        elif left < need[name]:
            res["parts"][name] = {
                "status": "skipped",
                "reason": f"time budget: {left:.0f} s left, the part needs ~{need[name]} s",
            }
        else:
            log(f"part {name}: start ({left:.0f} s of the budget left)")
            t = time.perf_counter()
            try:
                rec = {"status": "ok", **fn()}
            except Exception as e:  # noqa: BLE001 - recorded; the other parts still run
                log(traceback.format_exc().rstrip())
                rec = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:500]}"}
            rec["seconds"] = round(time.perf_counter() - t, 1)
            res["parts"][name] = rec
            gc.collect()  # what a part left behind (caches, trainers) is not the next one's
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        log(f"part {name}: {res['parts'][name]['status']}")
        save()

    holder: dict[str, Any] = {}

    def setup() -> dict[str, Any]:
        b = gt.setup_bench(s.shape, dev, args.tokenizer, args.data, s.max_items, s.batch_size)
        holder["b"] = b
        cfg = b.cfg
        return {
            "config": {k: v for k, v in cfg.items() if k not in ("architectures",)},
            "dtype": str(b.lm.dtype).replace("torch.", ""),
            "build_s": round(b.build_s, 2),
            "capture_s": round(b.capture_s, 3),
            "weights_gb": round(torch.cuda.memory_allocated(dev) / 1e9, 2) if b.gpu else None,
        }

    model_parts = {"pas", "serve", "train", "4bit"}
    if model_parts & set(parts):
        run("setup", setup)
    b = holder.get("b")
    setup_state = res["parts"].get("setup", {}).get("status", "not run")
    no_model = f"no model (part setup: {setup_state})" if b is None else ""

    def share(name: str) -> float:
        """Deadline of a part: its share of the remaining budget by expected time."""
        rest = [p for p in parts if p in PARTS[PARTS.index(name) :]]
        total = sum(need[p] for p in rest)
        return time.perf_counter() + (end - time.perf_counter()) * need[name] / total

    if "pas" in parts:
        run("pas", lambda: part_pas(b, s, share("pas"), log), b is not None, no_model)
    if "serve" in parts:
        run("serve", lambda: part_serve(b, s, share("serve"), log), b is not None, no_model)
    if "train" in parts:
        pas = res["parts"].get("pas", {})
        per = pas.get("variants", {}).get("honest_fewshot_all", {}).get("s_per_person")
        has_trl = importlib.util.find_spec("trl") is not None
        run(
            "train",
            lambda: part_train(b, s, share("train"), log, per),
            b is not None and has_trl,
            no_model or "trl is not installed (pip install 'palign[train]')",
        )
    if "ray" in parts:
        tok = b.tok if b is not None else gt.load_tokenizer(args.tokenizer)
        has_ray = importlib.util.find_spec("ray") is not None
        run(
            "ray",
            lambda: part_ray(s, dev, args.data, tok, log),
            has_ray,
            "ray is not installed (pip install 'palign[ray]')",
        )
    if "4bit" in parts:
        why = (
            "no CUDA device (bitsandbytes 4-bit needs one)"
            if dev.type != "cuda"
            else "bitsandbytes is not installed"
            if importlib.util.find_spec("bitsandbytes") is None
            else no_model
        )
        run("4bit", lambda: part_4bit(b, s, log), not why, why)
    res["total_s"] = round(time.perf_counter() - t_all, 1)
    save()
    bad_parts = [k for k, v in res["parts"].items() if v["status"] == "error"]
    log(f"done in {res['total_s']} s; errors: {', '.join(bad_parts) or 'none'}; -> {out_dir}")
    if args.smoke:  # the smoke must show that every part runs and the equality checks hold
        serve, ray = res["parts"].get("serve", {}), res["parts"].get("ray", {})
        checks = [v["status"] == "ok" for k, v in res["parts"].items() if k != "4bit"]
        if "serve" in parts:
            checks.append(serve.get("solo_equal_all") is True)
        if "ray" in parts:
            checks.append(ray.get("identical") is True)
        return 0 if all(checks) else 1
    return 0 if not bad_parts else 1


if __name__ == "__main__":
    sys.exit(main())
