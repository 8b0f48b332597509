"""PAS's exact speed-ups, side by side in one process, each checked for equal answers.

Three switches, each exact (the same chosen alphas and predicted answers):

* ``zero`` (``predict_aligned(share_zero=)``): persons whose chosen alpha is 0 (a zero
  steering vector) are read on the test items unsteered, so persons with equal prompts share
  those reads; off, each is read as a (zero) steering row at every position.
* ``stop`` (PAS option ``alpha_early_stop``): the held-out alpha search stops reading an
  alpha once its running error already ranks behind a complete alpha (docs/pas.md).
* ``share`` (PAS option ``share_lower_layers`` and ``predict_aligned(share_lower=)``): rows
  that differ only by steering run the layers below the lowest steered layer once
  (``palign.steering.share``, forward hooks).

For every method of ``--methods`` the variants ``none`` (all off), ``zero``, ``stop``,
``share`` (each alone) and ``all`` run the same persons and test items: alpha selection for
all persons at once (``fit_many``, as ``palign eval`` does per person group), then the test
items (``predict_aligned``). Each variant gets a fresh method object (no cache shared between
variants except the contrastive activations on disk, captured once before any timing).
``--repeats R`` runs the variants R times in rotating order and keeps the median. The
variants' chosen alphas, predicted answers, and the held-out errors of alphas that were not
cut must be identical, else the script says which and exits 1.

Usage::

    python benchmarks/pas_speedups.py --model smollm2 --persons 2 --max-items 10 \\
        --max-shown 30 --alpha-grid 0,2,8

Writes ``--out`` (default ``benchmarks/results/pas_speedups-<model>.json``) and the same
name with ``.md``, after every method (a killed run keeps the finished methods; ``--resume``
skips them, their timings then come from the earlier process, said so in the page).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

VARIANTS: dict[str, dict[str, bool]] = {
    "none": {"zero": False, "stop": False, "share": False},
    "zero": {"zero": True, "stop": False, "share": False},
    "stop": {"zero": False, "stop": True, "share": False},
    "share": {"zero": False, "stop": False, "share": True},
    "all": {"zero": True, "stop": True, "share": True},
}


TIMES = ("fit_s", "test_s", "total_s", "fit_cpu_s", "test_cpu_s", "total_cpu_s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--methods", default="pas+few-shot,pas", help="comma-separated")
    p.add_argument("--persons", type=int, default=2, help="the first N persons of the test set")
    p.add_argument("--max-items", type=int, default=10, help="test items (spread over traits)")
    p.add_argument(
        "--max-shown",
        type=int,
        default=None,
        help="keep only the first N shown items (a smaller fit; default: all)",
    )
    p.add_argument("--alpha-grid", default="0,1,2,4,6,8")
    p.add_argument("--k", type=int, default=24)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--data", default=None, help="PAPI folder (default: $PALIGN_DATA)")
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true", help="keep finished methods of --out")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated variants to run (always with none, the baseline); default all",
    )
    return p.parse_args(argv)


def warm_up(lm: Any) -> None:
    """One small steered readout before any timing (first-call costs out of the first variant)."""
    from palign.models.readout import ReadRequest, option_probs

    cfg = lm.model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    u = torch.zeros(2, cfg.num_hidden_layers, cfg.hidden_size)
    u[:, cfg.num_hidden_layers // 2 :] = 0.1
    u[1] *= 2
    reqs = [ReadRequest("Answer.", "You like art.", r) for r in (0, 1)]
    for share in (False, True):
        option_probs(lm, reqs, steering=u, share_lower=share)


def machine(lm: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(lm.device),
        "dtype": str(lm.dtype),
    }
    if lm.device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(lm.device)
    try:
        out["load_avg_at_start"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    return out


def run_variant(
    lm: Any,
    ds: Any,
    persons: list[Any],
    items: list[str],
    method_name: str,
    name: str,
    opts: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Alpha selection of all persons, then their test items, under variant ``name``."""
    from palign.eval.runs import predict_aligned
    from palign.methods.base import MethodConfig, get_method

    v = VARIANTS[name]
    o = {**opts, "alpha_early_stop": v["stop"], "share_lower_layers": v["share"]}
    method = get_method(method_name, MethodConfig("agreement", args.seed, o))
    t0, c0 = time.perf_counter(), time.process_time()
    aligned = method.fit_many(lm, ds, persons)
    t1, c1 = time.perf_counter(), time.process_time()
    recs = predict_aligned(
        lm,
        ds,
        aligned,
        items,
        "logits",
        args.batch_size,
        share_zero=v["zero"],
        share_lower=v["share"],
    )
    t2, c2 = time.perf_counter(), time.process_time()
    return {
        "fit_s": t1 - t0,
        "test_s": t2 - t1,
        "total_s": t2 - t0,
        "fit_cpu_s": c1 - c0,
        "test_cpu_s": c2 - c1,
        "total_cpu_s": c2 - c0,
        "alphas": [a.info["alpha"] for a in aligned],
        "answers": [[r["answers"][i] for i in items] for r in recs],
        "validation_errors": [a.info["validation_errors"] for a in aligned],
        "alpha_cuts": [a.info.get("alpha_cuts", {}) for a in aligned],
    }


def check(results: dict[str, dict[str, Any]]) -> list[str]:
    """Differences between the variants and ``none`` (empty = identical answers)."""
    base = results["none"]
    bad = []
    for name, r in results.items():
        if r["alphas"] != base["alphas"]:
            bad.append(f"{name}: chosen alphas {r['alphas']} != {base['alphas']}")
        if r["answers"] != base["answers"]:
            bad.append(f"{name}: predicted test answers differ from 'none'")
        for k, (errs, ref) in enumerate(zip(r["validation_errors"], base["validation_errors"])):
            for a, e in errs.items():
                if e is not None and e != ref[a]:
                    bad.append(f"{name}: person {k} held-out error at alpha {a} {e} != {ref[a]}")
    return bad


def markdown(d: dict[str, Any]) -> str:
    lines = [
        f"# PAS exact speed-ups: {d['model']}",
        "",
        f"Command: `{d['command']}`",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in d['versions'].items())}. Machine: "
        f"{d['machine'].get('gpu') or d['machine']['processor']}, "
        f"{d['machine']['cpu_count']} CPUs, torch threads {d['machine']['torch_threads']}, "
        f"device {d['machine']['device']}, {d['machine']['dtype']}.",
        "",
        f"{d['config']['persons']} persons, {d['config']['test_items']} test items, "
        f"{d['config']['shown_items']} shown items, grid {d['config']['alpha_grid']}, K "
        f"{d['config']['k']}, {d['config']['folds']} folds, steering at all positions, "
        f"median of {d['config']['repeats']} run(s) per variant. Ratio = time of `none` / time "
        "of the variant (>1 = faster); wall-clock times, and this process's CPU time (the "
        "steadier figure on a shared CPU machine).",
        "",
        "| method | variant | fit (s) | test (s) | total (s) | ratio fit | ratio test | ratio "
        "total | CPU total (s) | ratio CPU total | identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, res in d["methods"].items():
        base = res["variants"]["none"]
        for name, r in res["variants"].items():
            rf = base["fit_s"] / r["fit_s"] if r["fit_s"] else float("nan")
            rt = base["test_s"] / r["test_s"] if r["test_s"] else float("nan")
            rr = base["total_s"] / r["total_s"] if r["total_s"] else float("nan")
            rc = base["total_cpu_s"] / r["total_cpu_s"] if r["total_cpu_s"] else float("nan")
            lines.append(
                f"| {m} | {name} | {r['fit_s']:.1f} | {r['test_s']:.1f} | {r['total_s']:.1f} | "
                f"{rf:.2f} | {rt:.2f} | {rr:.2f} | {r['total_cpu_s']:.1f} | {rc:.2f} | "
                f"{'yes' if not res['mismatches'] else 'NO'} |"
            )
        # the early stop's cuts: from the variant that has only it, else from "all"
        stopped = res["variants"].get("stop") or res["variants"].get("all") or base
        cuts = stopped.get("alpha_cuts") or []
        lines.append("")
        lines.append(
            f"{m}: chosen alphas {res['variants']['none']['alphas']}; alphas cut by the early "
            f"stop per person: {[sorted(c) for c in cuts]}"
            + (
                f"; timings from an earlier process ({res['resumed']})"
                if res.get("resumed")
                else ""
            )
        )
        if res["mismatches"]:
            lines.append("MISMATCHES: " + "; ".join(res["mismatches"]))
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from palign.data import load_dataset
    from palign.eval.runs import test_items, versions, write_json_atomic
    from palign.models.loading import load_model

    out = Path(args.out or f"benchmarks/results/pas_speedups-{args.model}.json")
    wanted = {v.strip() for v in args.variants.split(",") if v.strip()} | {"none"}
    unknown = wanted - set(VARIANTS)
    if unknown:
        print(f"pas_speedups: error: unknown variants {sorted(unknown)}; use {list(VARIANTS)}")
        return 2
    names_all = [v for v in VARIANTS if v in wanted]
    ds = load_dataset(args.data, "ipip-neo")
    if args.max_shown:
        inv = copy.copy(ds.inventory)
        inv.shown_ids = inv.shown_ids[: args.max_shown]
        inv.__post_init__()
        ds = copy.copy(ds)
        ds.inventory = inv
    persons = ds.persons[: args.persons]
    items = test_items(ds.inventory, args.max_items)
    grid = [float(a) for a in args.alpha_grid.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    warm_up(lm)
    opts = {
        "alpha_grid": grid,
        "k": args.k,
        "folds": args.folds,
        "steer_position": "all",
        "batch_size": args.batch_size,
    }
    argv_used = sys.argv[1:] if argv is None else argv
    doc: dict[str, Any] = {
        "model": args.model,
        "model_id": lm.model_id,
        "command": "python benchmarks/pas_speedups.py " + shlex.join(argv_used),
        "versions": versions(),
        "machine": machine(lm),
        "config": {
            "persons": [p.id for p in persons],
            "test_items": len(items),
            "shown_items": len(ds.inventory.shown_ids),
            "alpha_grid": grid,
            "k": args.k,
            "folds": args.folds,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "steer_position": "all",
            "readout": "logits",
            "variants": names_all,
        },
        "methods": {},
    }
    if args.resume and out.is_file():
        old = json.loads(out.read_text())
        if old.get("config") == doc["config"] and old.get("model") == args.model:
            doc["methods"] = old.get("methods", {})
            for res in doc["methods"].values():
                res.setdefault("resumed", old.get("command"))
    failed = False
    for m in args.methods.split(","):
        if m in doc["methods"]:
            print(f"{m}: done earlier, kept")
            continue
        from palign.methods.base import MethodConfig, get_method

        # the contrastive activations, captured once (disk cache) before any timing
        get_method(m, MethodConfig("agreement", args.seed, dict(opts))).setup(lm, ds)
        names = list(names_all)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
        for rep in range(args.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                r = run_variant(lm, ds, persons, items, m, name, opts, args)
                runs[name].append(r)
                print(
                    f"{m} {name} (run {rep + 1}): fit {r['fit_s']:.1f}s test {r['test_s']:.1f}s "
                    f"alphas {r['alphas']}",
                    flush=True,
                )
        variants = {}
        for name, rs in runs.items():
            med = {k: statistics.median(r[k] for r in rs) for k in TIMES}
            variants[name] = {**rs[0], **med, "runs_s": [r["total_s"] for r in rs]}
        bad = []
        for rep in range(args.repeats):
            bad += check({k: runs[k][rep] for k in names})
        failed |= bool(bad)
        base = variants["none"]
        doc["methods"][m] = {
            "variants": variants,
            "ratios_total": {k: base["total_s"] / v["total_s"] for k, v in variants.items()},
            "ratios_total_cpu": {
                k: base["total_cpu_s"] / v["total_cpu_s"] for k, v in variants.items()
            },
            "mismatches": bad,
        }
        write_json_atomic(out, doc)
        out.with_suffix(".md").write_text(markdown(doc), encoding="utf-8")
        print(
            f"{m}: total ratios "
            + ", ".join(f"{k} {v:.2f}" for k, v in doc["methods"][m]["ratios_total"].items())
            + ("" if not bad else f"; MISMATCHES: {bad}")
        )
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
