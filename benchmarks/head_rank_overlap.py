"""How much the head ranking (``--head-rank mean`` vs ``val``), the probe split (``--probe-split
items`` vs ``samples``) and the answer semantics change the PAS heads, on a real model and
real PAPI persons.

For each person: the top-K heads of :func:`palign.steering.pas.fit_person` with
``head_rank="mean"`` (the original's: mean of validation and training probe accuracy) and
``"val"`` (validation accuracy only), under agreement semantics, and the overlap of the two
sets; also the overlap between agreement and paper semantics (same ranking), and the share
of the person's labelled shown items that are reverse keyed (their labels flip between the
semantics). Probe split: the overlap of the top-K heads of the item split (palign's) and
the sample split (the original's), next to the overlap of each split with itself under
another seed: the original sets no seed, so seed-to-seed overlap of the sample split is the
run-to-run variation of the original itself. Activations: the contrastive shown-item
activations PAS uses (disk cache).

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
    ap.add_argument(
        "--other-seeds",
        type=int,
        default=4,
        help="further split seeds for the seed-to-seed overlap",
    )
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
        ans = np.nan_to_num(p.answer_vector(inv, inv.shown_ids, "agreement"))
        split_fits = {
            (split, s): fit_person(acts, ans, K=args.k, seed=s, probe_split=split)
            for split in ("items", "samples")
            for s in range(args.seed, args.seed + 1 + args.other_seeds)
        }

        def seed_overlap(split: str, fits: dict = split_fits) -> float:
            base = set(fits[split, args.seed].heads)
            others = range(args.seed + 1, args.seed + 1 + args.other_seeds)
            return float(np.mean([len(base & set(fits[split, s].heads)) for s in others]))

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
                "items_vs_samples_overlap": len(
                    set(split_fits["items", args.seed].heads)
                    & set(split_fits["samples", args.seed].heads)
                ),
                "items_seed_overlap": seed_overlap("items"),
                "samples_seed_overlap": seed_overlap("samples"),
                "val_acc_kept_samples": float(split_fits["samples", args.seed].val_accuracy.mean()),
                "train_acc_kept_samples": float(
                    split_fits["samples", args.seed].train_accuracy.mean()
                ),
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
        "other_seeds": args.other_seeds,
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
        f"{summary['train_acc_kept_val']:.3f}; probe split: top-K heads shared by the item and "
        f"the sample split {summary['items_vs_samples_overlap']:.1f}/{args.k} (same split, "
        f"other seeds: items {summary['items_seed_overlap']:.1f}, samples "
        f"{summary['samples_seed_overlap']:.1f}); kept heads' val/train accuracy with the sample "
        f"split {summary['val_acc_kept_samples']:.3f}/{summary['train_acc_kept_samples']:.3f} "
        f"-> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
