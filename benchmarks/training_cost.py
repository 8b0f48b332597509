"""Training cost per person of the baselines beside PAS: wall clock and peak memory.

    nice -n 19 python benchmarks/training_cost.py                 # CPU, embedded SmolLM2, 2 persons
    python benchmarks/training_cost.py --steps 5 --batch 8        # other reduced recipe

Same model, same device, one run: each method runs in its own fresh subprocess (so peak
memory is that method's), fitting the first N PAPI persons with ``Method.fit`` exactly as
``palign eval`` does (DPO and GRPO train a LoRA adapter with TRL; PAS captures the shown-item
activations once, then fits probes and chooses alpha on held-out shown items).

On CPU a full paper recipe (250 steps x batch 16 per person) is far too slow for a smoke
benchmark, so DPO and GRPO run a REDUCED recipe (``--steps``, ``--batch``; stated in the
output), and the time of the full recipe is projected linearly from the measured seconds per
training example (steps x batch). DPO runs with ``precompute_ref=False`` here (the frozen
base's reference forward in every step, so the cost is linear in the examples; the default
precomputes it once per pair, which the full recipe amortises over ~40 epochs, so the
projection is an upper bound). PAS runs its full procedure. Peak memory is the process's
resident-set high-water mark (``ru_maxrss``, CPU) or ``torch.cuda.max_memory_allocated`` (GPU),
next to the same figure right after the model was loaded.

Writes the figures as JSON (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FULL_STEPS, FULL_BATCH = 250, 16


def rss_mb() -> float:
    """Peak resident set of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Fit ``args.method`` for the first persons; returns the figures."""
    import tempfile

    import torch

    from palign.data import load_dataset
    from palign.methods import MethodConfig, get_method
    from palign.models.loading import load_model

    torch.manual_seed(args.seed)
    ds = load_dataset(args.data, "ipip-neo")
    persons = ds.persons[: args.persons]
    t = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    load_s = time.perf_counter() - t
    cuda = lm.device.type == "cuda"
    mem_after_load = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb()
    opts: dict[str, Any] = {}
    if args.method in ("dpo", "grpo"):
        opts = {"steps": args.steps, "batch": args.batch, "micro_batch": args.batch}
        opts["select"] = args.select
        if args.method == "grpo":
            opts["num_generations"] = min(8, args.batch)
        else:  # per-step reference forwards: the cost scales with the steps (see the docstring)
            opts["precompute_ref"] = False
    method = get_method(args.method, MethodConfig("agreement", args.seed, opts))
    tmp = tempfile.mkdtemp(prefix="palign-cost-")
    if hasattr(method, "adapter_root"):
        method.adapter_root = Path(tmp) / "adapters"
        method.progress = False
    t = time.perf_counter()
    method.setup(lm, ds)
    setup_s = time.perf_counter() - t
    rows = []
    for p in persons:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        a = method.fit(lm, ds, p)
        dt = time.perf_counter() - t
        row: dict[str, Any] = {
            "person": p.id,
            "seconds": round(dt, 2),
            "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb(), 1),
        }
        if args.method in ("dpo", "grpo"):
            row["train_seconds"] = a.info.get("train_seconds")
            row["n_examples"] = a.info.get("n_examples")
            row["loss_first_last"] = [a.info["loss"].get("first"), a.info["loss"].get("last")]
            examples = args.steps * args.batch
            row["seconds_per_example"] = round(dt / examples, 3)
            row["projected_full_recipe_s"] = round(dt / examples * FULL_STEPS * FULL_BATCH, 1)
        else:
            row["alpha"] = a.info.get("alpha")
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {
        "method": args.method,
        "record": method.record(),
        "load_s": round(load_s, 2),
        "setup_s": round(setup_s, 2),
        "mem_after_load_mb": round(mem_after_load, 1),
        "persons": rows,
        "mean_seconds_per_person": round(sum(r["seconds"] for r in rows) / len(rows), 2),
        "device": str(lm.device),
        "model_id": lm.model_id,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--methods", default="dpo,grpo,pas", help="comma-separated (default dpo,grpo,pas)"
    )
    ap.add_argument("--persons", type=int, default=2, help="first N PAPI persons (default 2)")
    ap.add_argument("--steps", type=int, default=2, help="reduced training steps (default 2)")
    ap.add_argument("--batch", type=int, default=8, help="reduced effective batch (default 8)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default=None, help="PAPI folder (default $PALIGN_DATA / ../shared)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--select",
        choices=("none", "heldout"),
        default="none",
        help="dpo/grpo step selection (default none: the training alone, as the recorded "
        "figures; heldout adds the held-out reads of palign's default)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--out", default=str(HERE / "results" / "training_cost.json"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.data is None:
        shared = HERE.parent.parent / "shared" / "papi"
        args.data = os.environ.get("PALIGN_DATA") or (str(shared) if shared.is_dir() else None)
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        args.method = args.worker
        print(json.dumps(worker(args)))
        return
    results = {}
    for m in args.methods.split(","):
        cmd = [sys.executable, __file__, "--worker", m] + [
            f"--{k}={v}"
            for k, v in (
                ("persons", args.persons),
                ("steps", args.steps),
                ("batch", args.batch),
                ("model", args.model),
                ("device", args.device),
                ("seed", args.seed),
                ("select", args.select),
                ("threads", args.threads),
            )
        ]
        if args.data:
            cmd.append(f"--data={args.data}")
        t = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            sys.exit(f"{m} failed (exit {proc.returncode})")
        results[m] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[m]["process_wall_s"] = round(time.perf_counter() - t, 1)
    import peft
    import transformers
    import trl

    payload = {
        "benchmark": "training_cost",
        "command": " ".join(["python", "benchmarks/training_cost.py", *sys.argv[1:]]),
        "reduced_recipe": {
            "steps": args.steps,
            "batch": args.batch,
            "note": f"dpo/grpo trained {args.steps} steps x batch {args.batch}; the paper recipe is "
            f"{FULL_STEPS} x {FULL_BATCH} (projected linearly per example); pas runs in full",
        },
        "persons": args.persons,
        "threads": args.threads,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "peft": peft.__version__,
        },
        "methods": results,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"{'method':8} {'s/person':>9} {'peak MB':>8} {'full recipe s (proj.)':>22}")
    for m, r in results.items():
        proj = [p.get("projected_full_recipe_s") for p in r["persons"]]
        peak = max(p["peak_mb"] for p in r["persons"])
        pj = f"{sum(proj) / len(proj):.0f}" if proj[0] is not None else "-"
        print(f"{m:8} {r['mean_seconds_per_person']:>9.1f} {peak:>8.0f} {pj:>22}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
