"""Per-person PAS fit time: vectorised torch probes vs one scikit-learn probe per head.

The fit timed is what runs per person with no model forward: labels, one logistic probe per
(layer, head) on a 60/40 item split, ranking, top-K selection and mass-mean directions
(:func:`palign.steering.pas.fit_person`). Activations are synthetic (standard normal with a
planted class signal on a few heads), 240 samples = 120 items x (A, E).

The baseline is what honest_llama/PAS did: ``LogisticRegression(random_state=0,
max_iter=1000)`` fitted per head in a Python loop, then scored on the validation split
(BLAS limited to one thread). Where the full loop would take over ~60 s (projected from 32
heads spread over the layers), 128 heads spread over the layers are timed and the total
extrapolated (said so in the output). The torch fit is timed with torch's default thread
count and with one thread.

Usage::

    .venv/bin/python benchmarks/pas_fit_speed.py [--repeats 5] [--out benchmarks/results/pas_fit_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from palign import __version__
from palign.steering.pas import fit_person, labels_for
from palign.steering.probes import rank_heads

SHAPES = {
    "SmolLM2-135M (30 layers x 9 heads x 64)": (30, 9, 64),
    "Llama-3-8B (32 layers x 32 heads x 128)": (32, 32, 128),
}
N_ITEMS = 120  # 240 samples
K = 24
SKLEARN_BUDGET_S = 60.0


def synthetic(L: int, H: int, d: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Activations ``(2 * N_ITEMS, L, H, d)`` in the PAS layout and answers 1..5."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    answers = rng.choice([1, 2, 3, 4, 5], size=N_ITEMS).astype(float)
    acts = torch.randn(2 * N_ITEMS, L, H, d, generator=g)
    y = labels_for(answers)
    sign = torch.where(y == 1, 1.0, torch.where(y == 0, -1.0, 0.0))
    for k in range(32):  # planted heads of decreasing strength
        layer, head = int(rng.integers(L)), int(rng.integers(H))
        v = torch.randn(d, generator=g)
        acts[:, layer, head] += (2.0 / (1 + k / 4)) * sign.unsqueeze(1) * v / v.norm()
    return acts, answers


def time_torch(
    acts: torch.Tensor, answers: np.ndarray, repeats: int, threads: int
) -> dict[str, object]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    cuda = acts.device.type == "cuda"
    try:
        fit = fit_person(acts, answers, K=K, seed=0)  # warm-up
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            fit = fit_person(acts, answers, K=K, seed=0)  # returns CPU tensors (synchronises)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return {"median_s": statistics.median(times), "min_s": min(times), "heads": fit.heads}


def time_sklearn(acts: torch.Tensor, answers: np.ndarray) -> dict[str, object]:
    """One LogisticRegression per head, on the same split fit_person uses (seed 0)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from palign.steering.pas import _split_items  # same split as the torch fit

    a = np.nan_to_num(answers)
    usable = np.nonzero((a > 0) & (a != 3))[0]
    tr_i, va_i = _split_items(len(usable), 0, 0.4)
    tr_items, va_items = usable[tr_i.numpy()], usable[va_i.numpy()]
    tr = np.stack([2 * tr_items, 2 * tr_items + 1], 1).ravel()
    va = np.stack([2 * va_items, 2 * va_items + 1], 1).ravel()
    y = labels_for(answers).numpy()
    X = acts.numpy()
    n, L, H, d = X.shape
    heads = [(layer, head) for layer in range(L) for head in range(H)]
    acc = np.full((L, H), np.nan)

    def fit_heads(subset: list[tuple[int, int]]) -> float:
        t0 = time.perf_counter()
        for layer, head in subset:
            clf = LogisticRegression(random_state=0, max_iter=1000)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(X[tr, layer, head], y[tr])
            acc[layer, head] = float((clf.predict(X[va, layer, head]) == y[va]).mean())
        return time.perf_counter() - t0

    # BLAS limited to one thread: many tiny fits gain nothing from threads, and threads
    # that spin on a busy machine make the loop erratic
    with threadpool_limits(limits=1):
        probe = heads[:: max(1, len(heads) // 32)]  # spread over all layers
        projected = fit_heads(probe) / len(probe) * len(heads)
        if projected <= SKLEARN_BUDGET_S:
            subset = heads
        else:
            subset = heads[:: max(1, len(heads) // 128)]
        elapsed = fit_heads(subset)
    done = len(subset)
    out: dict[str, object] = {
        "fits_timed": done,
        "fits_total": len(heads),
        "timed_s": elapsed,
        "total_s": elapsed / done * len(heads),
        "extrapolated": done < len(heads),
    }
    if done == len(heads):
        out["heads"] = rank_heads(torch.tensor(acc, dtype=torch.float32), K)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "pas_fit_speed.json"))
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--device", default="cpu", help="where the torch fit runs (cpu, cuda)")
    args = ap.parse_args()
    device = torch.device(args.device)

    default_threads = torch.get_num_threads()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = []
    print(f"torch {torch.__version__}, {default_threads} threads, load average {load_start}")
    for name, (L, H, d) in SHAPES.items():
        acts, answers = synthetic(L, H, d)
        tt = time_torch(acts.to(device), answers, args.repeats, default_threads)
        t1 = time_torch(acts.to(device), answers, args.repeats, 1)
        row: dict[str, object] = {
            "shape": name,
            "layers": L,
            "heads": H,
            "head_dim": d,
            "samples": 2 * N_ITEMS,
            "K": K,
            "device": str(device),
            "torch_threads": default_threads,
            "torch_fit_median_s": round(float(tt["median_s"]), 4),
            "torch_fit_min_s": round(float(tt["min_s"]), 4),
            "torch_1thread_fit_median_s": round(float(t1["median_s"]), 4),
            "torch_1thread_fit_min_s": round(float(t1["min_s"]), 4),
        }
        if not args.skip_sklearn:
            sk = time_sklearn(acts, answers)
            row.update(
                {
                    "sklearn_probes_s": round(float(sk["total_s"]), 2),
                    "sklearn_fits_timed": sk["fits_timed"],
                    "sklearn_fits_total": sk["fits_total"],
                    "sklearn_extrapolated": sk["extrapolated"],
                    "speedup_vs_best_torch": round(
                        float(sk["total_s"]) / min(float(tt["median_s"]), float(t1["median_s"])), 1
                    ),
                }
            )
            if "heads" in sk:
                ours = set(tt["heads"])  # type: ignore[arg-type]
                row["topK_overlap_with_sklearn"] = len(ours & set(sk["heads"])) / K  # type: ignore[arg-type]
        results.append(row)
        extra = ""
        if "sklearn_probes_s" in row:
            extra = (
                f"   sklearn loop {row['sklearn_probes_s']:.2f} s"
                f"{' (extrapolated from ' + str(row['sklearn_fits_timed']) + ' fits)' if row['sklearn_extrapolated'] else ''}"
                f"   speed-up x{row['speedup_vs_best_torch']}"
            )
            if "topK_overlap_with_sklearn" in row:
                extra += f"   top-{K} overlap {row['topK_overlap_with_sklearn']:.2f}"
        print(
            f"{name}: torch fit {row['torch_fit_median_s']:.3f} s with {default_threads} threads, "
            f"{row['torch_1thread_fit_median_s']:.3f} s with 1 (medians of {args.repeats}){extra}"
        )

    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover
        pass
    record = {
        "benchmark": "pas_fit_speed",
        "command": "python benchmarks/pas_fit_speed.py"
        + (f" --device {args.device}" if args.device != "cpu" else ""),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "palign_version": __version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "load_average_at_start": load_start,
        "load_average_at_end": load,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
