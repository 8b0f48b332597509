"""How much the head ranking (``--head-rank mean`` vs ``val``) and the answer semantics change
the PAS heads, on a real model and real PAPI persons.

For each person: the top-K heads of :func:`palign.steering.pas.fit_person` with
``head_rank="mean"`` (the original's: mean of validation and training probe accuracy) and
``"val"`` (validation accuracy only), under agreement semantics, and the overlap of the two
sets; also the overlap between agreement and paper semantics (same ranking), and the share
of the person's labelled shown items that are reverse keyed (their labels flip between the
semantics). Activations: the contrastive shown-item activations PAS uses (disk cache).

    python benchmarks/head_rank_overlap.py --model smollm2 --persons 10
    # -> benchmarks/results/head_rank_overlap-<model>.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    from palign.data import load_dataset
    from palign.methods.pas import shown_activations
    from palign.models.loading import load_model
    from palign.steering.arch import resolve_arch
    from palign.steering.pas import fit_person

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default=None)
    ap.add_argument("--persons", type=int, default=10)
    ap.add_argument("--k", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    ds = load_dataset(args.data)
    inv = ds.inventory
    lm = load_model(args.model)
    arch = resolve_arch(lm.model)
    t0 = time.perf_counter()
    acts = shown_activations(lm, ds, arch, progress=False)
    t_capture = time.perf_counter() - t0
    rows = []
    for p in ds.persons[: args.persons]:
        fits = {}
        for sem in ("agreement", "paper"):
            ans = np.nan_to_num(p.answer_vector(inv, inv.shown_ids, sem))
            for rank in ("mean", "val"):
                fits[sem, rank] = fit_person(acts, ans, K=args.k, seed=args.seed, head_rank=rank)
        usable = [i for i in inv.shown_ids if p.stored.get(i, 0) not in (0, 3)]
        rev = sum(inv.item(i).key < 0 for i in usable)

        def overlap(a: tuple[str, str], b: tuple[str, str], fits: dict = fits) -> int:
            return len(set(fits[a].heads) & set(fits[b].heads))

        rows.append(
            {
                "person": p.id,
                "mean_vs_val_overlap": overlap(("agreement", "mean"), ("agreement", "val")),
                "agreement_vs_paper_overlap_mean": overlap(
                    ("agreement", "mean"), ("paper", "mean")
                ),
                "val_acc_kept_mean": float(fits["agreement", "mean"].val_accuracy.mean()),
                "val_acc_kept_val": float(fits["agreement", "val"].val_accuracy.mean()),
                "train_acc_kept_mean": float(fits["agreement", "mean"].train_accuracy.mean()),
                "train_acc_kept_val": float(fits["agreement", "val"].train_accuracy.mean()),
                "labelled_items": len(usable),
                "reverse_keyed_labelled_items": int(rev),
            }
        )
    keys = [k for k in rows[0] if k != "person"]
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    res = {
        "model": lm.model_id,
        "revision": lm.revision,
        "dtype": str(lm.dtype),
        "k": args.k,
        "seed": args.seed,
        "persons": len(rows),
        "capture_s": round(t_capture, 1),
        "torch": torch.__version__,
        "summary": summary,
        "rows": rows,
    }
    out = Path(args.out) if args.out else HERE / "results" / f"head_rank_overlap-{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(
        f"{lm.model_id} ({lm.revision}), {len(rows)} persons, K={args.k}: top-K heads shared by "
        f"mean and val ranking {summary['mean_vs_val_overlap']:.1f}/{args.k}; by agreement and "
        f"paper semantics (mean ranking) {summary['agreement_vs_paper_overlap_mean']:.1f}/{args.k}; "
        f"reverse-keyed share of labelled items "
        f"{summary['reverse_keyed_labelled_items'] / summary['labelled_items']:.1%}; kept heads' "
        f"val/train accuracy: mean ranking {summary['val_acc_kept_mean']:.3f}/"
        f"{summary['train_acc_kept_mean']:.3f}, val ranking {summary['val_acc_kept_val']:.3f}/"
        f"{summary['train_acc_kept_val']:.3f} -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
