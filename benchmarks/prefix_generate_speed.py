"""Open-ended generation with the shared prompt prefix computed once, against recomputing it.

    python benchmarks/prefix_generate_speed.py --model smollm2 --items 20
    python benchmarks/prefix_generate_speed.py --model qwen2.5-coder-1.5b --items 8 \\
        --out benchmarks/results/prefix_generate_speed-qwen2.5-coder-1.5b.json

One person's few-shot prompt (the paper's: the 120 shown statements with the person's
answers in the system prompt) and ``--items`` test statements, as ``palign generate-eval
--method few-shot`` asks them (:func:`palign.judge.generate.generate_texts`, greedy, so the
two paths can be compared text for text): the unshared loop (``share_prefix=False``: every
batch re-reads the whole prompt) and the shared one (the common prefix once per person), run
side by side in one process, ``--repeats`` times each in alternating order. Prints and saves
wall and CPU seconds per path, their ratio, the shared prefix length, and whether the texts
are identical (exit 1 if not).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--person", type=int, default=0, help="index of the test person")
    ap.add_argument("--items", type=int, default=20, help="test statements")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None, help="JSON result (default: print only)")
    args = ap.parse_args(argv)

    from palign.chat import chat_ids
    from palign.data import run_dataset
    from palign.eval.runs import test_items, versions
    from palign.judge import prompts
    from palign.judge.generate import generate_texts
    from palign.methods.few_shot import few_shot_prompt
    from palign.models.loading import load_model
    from palign.models.prefix_generate import shared_prefix_len

    ds = run_dataset(args.data, "ipip-neo")
    person = ds.persons[args.person]
    inv = ds.inventory
    items = test_items(inv, args.items)
    questions = [prompts.question(inv.statement(inv.item(i))) for i in items]
    system = few_shot_prompt(inv, person, "agreement")
    lm = load_model(args.model)
    seqs = [
        chat_ids(lm, [{"role": "system", "content": system}, {"role": "user", "content": q}])
        for q in questions
    ]
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=0.0, batch_size=args.batch_size)
    times: dict[str, list[dict[str, float]]] = {"unshared": [], "shared": []}
    texts: dict[str, list[str]] = {}
    for r in range(args.repeats):
        order = ("unshared", "shared") if r % 2 == 0 else ("shared", "unshared")
        for name in order:
            w, c = time.perf_counter(), time.process_time()
            out = generate_texts(lm, system, questions, share_prefix=name == "shared", **kw)
            times[name].append(
                {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c}
            )
            texts.setdefault(name, out)
    same = texts["unshared"] == texts["shared"]
    mean = {
        n: {k: sum(t[k] for t in ts) / len(ts) for k in ("wall_s", "cpu_s")}
        for n, ts in times.items()
    }
    res = {
        "model": {
            "spec": args.model,
            "id": lm.model_id,
            "revision": lm.revision,
            "dtype": str(lm.dtype).replace("torch.", ""),
        },
        "person": person.id,
        "items": len(items),
        "prompt_tokens": [len(s) for s in seqs],
        "shared_prefix_tokens": shared_prefix_len(seqs),
        "settings": {**kw, "repeats": args.repeats},
        "seconds": times,
        "mean": mean,
        "ratio_wall": mean["unshared"]["wall_s"] / mean["shared"]["wall_s"],
        "ratio_cpu": mean["unshared"]["cpu_s"] / mean["shared"]["cpu_s"],
        "texts_identical": same,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        },
        "versions": versions(),
    }
    print(
        f"{args.model}: {len(items)} statements, prompts {min(res['prompt_tokens'])}-"
        f"{max(res['prompt_tokens'])} tokens, shared prefix {res['shared_prefix_tokens']}; "
        f"unshared {mean['unshared']['wall_s']:.1f} s, shared {mean['shared']['wall_s']:.1f} s "
        f"wall: {res['ratio_wall']:.2f}x (CPU {res['ratio_cpu']:.2f}x); texts identical: {same}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
