"""Scale-out of ``palign eval`` on Ray: one process vs 1 and 2 Ray workers, same results.

    python benchmarks/scale_out.py                         # embedded SmolLM2, CPU workers
    python benchmarks/scale_out.py --persons 4 --max-items 6 --method few-shot   # quick look

In one run, on the same data and configuration (fresh run folders each time):

1. warm-up: the method's setup once (PAS: the contrastive activation capture goes into the
   on-disk cache), so no timed run pays it;
2. single process: ``run_eval`` (model load + setup from the cache + all person groups);
3. Ray with 1 worker, then with 2 workers (``run_eval_ray``; each starts and stops its own
   local Ray, one CPU per worker, one torch thread per worker).

With ``--regroup``, one more single-process run with groups twice as large tells whether
per-person files depend on the grouping (why the workers keep the one-process groups).

It prints and saves (``--out``, JSON) wall times, persons/min (whole run and steady state:
from the first to the last person group returned), the Ray start-up overhead (``ray.init``
and the workers' model load), the worker-2/worker-1 speed ratio and whether every person's
file is byte-identical to the single-process one (all fields but the timing ``seconds``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def person_texts(out: Path) -> dict[str, str]:
    """Each person file's JSON text with the timing field blanked."""
    texts = {}
    for p in sorted((out / "persons").glob("*.json")):
        rec = json.loads(p.read_text())
        rec["seconds"] = 0
        texts[p.stem] = json.dumps(rec, indent=1, ensure_ascii=False)
    return texts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default=None, help="PAPI folder (default: $PALIGN_DATA, ...)")
    ap.add_argument("--method", default="pas")
    ap.add_argument("--persons", type=int, default=6)
    ap.add_argument("--person-batch", type=int, default=1)
    ap.add_argument("--max-items", type=int, default=18)
    ap.add_argument("--alpha-grid", default="0,4,8")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument(
        "--alpha-selection", default="heldout", help="PAS: heldout (default) or fixed (--alpha)"
    )
    ap.add_argument("--alpha", type=float, default=4.0, help="PAS alpha with fixed selection")
    ap.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the single-process run (default 1: one core, like one worker)",
    )
    ap.add_argument(
        "--regroup",
        action="store_true",
        help="also run one process with groups twice as large: do per-person files change?",
    )
    ap.add_argument("--out", default=str(HERE / "results" / "scale_out.json"))
    args = ap.parse_args(argv)

    import ray
    import torch

    from palign.data import load_dataset
    from palign.eval.runs import RunConfig, run_eval
    from palign.methods import MethodConfig, get_method
    from palign.models.loading import load_model
    from palign.scale import run_eval_ray

    ds = load_dataset(args.data)
    ids = [p.id for p in ds.persons[: args.persons]]
    opts: dict[str, Any] = {}
    if args.method.startswith("pas"):
        opts = {"alpha_grid": [float(a) for a in args.alpha_grid.split(",")], "folds": args.folds}
        if args.alpha_selection == "fixed":
            opts = {"alpha_selection": "fixed", "alpha": args.alpha}

    def cfg(person_batch: int = args.person_batch) -> RunConfig:
        return RunConfig(
            method=args.method,
            model=args.model,
            persons=list(ids),
            data=args.data,
            person_batch=person_batch,
            max_items=args.max_items,
            options=dict(opts),
        )

    tmp = Path(tempfile.mkdtemp(prefix="palign-scale-"))
    rec: dict[str, Any] = {
        "command": "python benchmarks/scale_out.py " + " ".join(argv or sys.argv[1:]),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {"torch": torch.__version__, "ray": ray.__version__},
        "runs": {},
    }
    print(
        f"palign scale-out benchmark: {args.method} on {args.model}, {len(ids)} persons, "
        f"groups of {args.person_batch}, {args.max_items} test items",
        flush=True,
    )

    # 1. warm-up: the method's setup once (fills the activation cache)
    t = time.perf_counter()
    lm = load_model(args.model)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    get_method(args.method, MethodConfig("agreement", 0, opts)).setup(lm, ds)
    rec["warmup"] = {"load_s": round(load_s, 2), "setup_s": round(time.perf_counter() - t, 2)}
    print(f"warm-up: model load {load_s:.1f} s, setup {rec['warmup']['setup_s']} s", flush=True)
    del lm

    # 2. single process
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    res = run_eval(cfg(), tmp / "single", dataset=ds, progress=False)
    wall = time.perf_counter() - t
    rec["runs"]["single"] = {
        "wall_s": round(wall, 2),
        "persons_per_min": round(len(ids) / wall * 60, 2),
        "timings": res["timings"],
        "torch_threads": torch.get_num_threads(),
    }
    print(f"single process: {wall:.1f} s, {len(ids) / wall * 60:.2f} persons/min", flush=True)
    ref = person_texts(tmp / "single")

    # 3. Ray, 1 and 2 workers
    for n in [int(x) for x in args.workers.split(",")]:
        arrivals: list[float] = []

        def on_event(kind: str, info: dict[str, Any], arrivals: list[float] = arrivals) -> None:
            if kind == "chunk":
                arrivals.append(time.perf_counter())

        out = tmp / f"ray{n}"
        t = time.perf_counter()
        res = run_eval_ray(
            cfg(),
            out,
            workers=n,
            dataset=ds,
            progress=False,
            ray_init={"num_cpus": max(n, 1), "configure_logging": False},
            on_event=on_event,
        )
        wall = time.perf_counter() - t
        first = arrivals[0] - t if arrivals else None
        group = args.person_batch
        steady = (
            (len(ids) - group) / (arrivals[-1] - arrivals[0]) * 60
            if len(arrivals) > 1 and arrivals[-1] > arrivals[0]
            else None
        )
        got = person_texts(out)
        same = [p for p in ref if got.get(p) == ref[p]]
        rec["runs"][f"ray_{n}"] = {
            "wall_s": round(wall, 2),
            "persons_per_min": round(len(ids) / wall * 60, 2),
            "steady_persons_per_min": round(steady, 2) if steady else None,
            "first_group_s": round(first, 2) if first else None,
            "timings": res["timings"],
            "scale": res["scale"],
            "byte_identical_persons": len(same),
            "persons": len(ref),
            "identical": len(same) == len(ref) == len(got),
        }
        print(
            f"ray {n} worker(s): {wall:.1f} s ({len(ids) / wall * 60:.2f} persons/min; steady "
            f"{rec['runs'][f'ray_{n}']['steady_persons_per_min']}), ray.init "
            f"{res['scale']['ray_start_s']} s, worker model load {res['timings']['load_s']:.1f} s,"
            f" identical to one process: {len(same)}/{len(ref)}",
            flush=True,
        )

    # 4. does the grouping matter? one process with groups twice as large
    if args.regroup:
        res = run_eval(cfg(2 * args.person_batch), tmp / "regrouped", dataset=ds, progress=False)
        other = person_texts(tmp / "regrouped")
        differ = [p for p in ref if other.get(p) != ref[p]]
        answers_differ = 0
        for p in differ:
            a_rec, b_rec = json.loads(ref[p]), json.loads(other[p])
            answers_differ += sum(
                a_rec["answers"][i] != b_rec["answers"][i] for i in a_rec["answers"]
            )
        rec["grouping"] = {
            "person_batch": [args.person_batch, 2 * args.person_batch],
            "persons_differing": len(differ),
            "answers_differing": answers_differ,
        }
        print(
            f"groups of {2 * args.person_batch} instead of {args.person_batch}: "
            f"{len(differ)}/{len(ref)} person files differ",
            flush=True,
        )

    runs = rec["runs"]
    if "ray_1" in runs and "ray_2" in runs:
        rec["ratio_2_vs_1_workers"] = round(runs["ray_1"]["wall_s"] / runs["ray_2"]["wall_s"], 3)
        a, b = runs["ray_1"]["steady_persons_per_min"], runs["ray_2"]["steady_persons_per_min"]
        rec["ratio_2_vs_1_steady"] = round(b / a, 3) if a and b else None
    if "ray_1" in runs:
        rec["ray_overhead_1_worker_s"] = round(
            runs["ray_1"]["wall_s"] - runs["single"]["wall_s"], 2
        )
    rec["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    rec["all_identical"] = all(v.get("identical", True) for v in runs.values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps({k: v for k, v in rec.items() if k.startswith(("ratio", "ray_", "all"))}))
    print(f"saved {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if rec["all_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
