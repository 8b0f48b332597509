"""Items/second of the logits readout vs the generate readout on the embedded SmolLM2-135M.

Both readouts answer the same requests (persons x test items), measured side by side in one
process after a warm-up, interleaved person by person (alternating which goes first) so that
load from other processes hits both alike; wall-clock items/s and CPU-time ratios are saved.

Settings:
  neutral  the paper's neutral system prompt for every person (as the ``vanilla`` method);
  persona  a per-person system prompt listing the person's shown answers (the paper's PAS
           prompt form, ~1.6k tokens), where prefix sharing matters most.

Usage:
    .venv/bin/python benchmarks/readout_speed.py [--persons 2] [--items 30] [--threads N]

Writes ``benchmarks/results/readout_speed.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from palign.models import NEUTRAL_SYSTEM_PROMPT, OPTION_TEXTS, ReadRequest, load_model
from palign.models.prompts import build_generate_prompt, encode_prompt
from palign.models.readout import Readout, generate_answers, option_probs

ROOT = Path(__file__).resolve().parents[1]
LABELS = {5 - k: t for k, t in enumerate(OPTION_TEXTS)}  # 5 -> "Very Accurate"


def _persons_and_items(n_persons: int, n_items: int) -> tuple[list[str], list[list[str]]]:
    """Test statements and, per person, the shown items with their answers as text lines."""
    try:
        from palign.data import load_dataset

        ds = load_dataset(_data_dir(), "ipip-neo")
    except Exception:  # data layer missing: read the item texts directly
        return _items_from_csv(n_items), [[] for _ in range(n_persons)]
    inv = ds.inventory
    statements = [inv.statement(inv.item(i)) for i in inv.test_ids[:n_items]]
    shown = []
    for person in ds.select(n_persons):
        answers = person.answers(inv, "agreement", ids=inv.shown_ids)
        shown.append([f"{inv.item(i).text}:{LABELS[a]}" for i, a in answers.items()])
    return statements, shown


def _data_dir() -> Path:
    return Path(os.environ.get("PALIGN_DATA") or ROOT.parent / "shared" / "papi")


def _items_from_csv(n_items: int) -> list[str]:
    with open(_data_dir() / "mpi_300.csv", newline="", encoding="utf-8") as f:
        texts = [row["text"].strip() for row in csv.DictReader(f)]
    return [f"You {t[:1].lower()}{t[1:].rstrip('.')}." for t in texts[:n_items]]


def _persona_prompt(lines: list[str]) -> str:
    return "Here are some of your behaviors and your level of recognition towards them;" + ";".join(
        lines
    )


def run_setting(
    lm, groups: list[list[ReadRequest]], repeats: int, args: argparse.Namespace
) -> dict:
    """Measure both readouts on the same requests.

    Interleaved per person (one ``option_probs`` call and one ``generate_answers`` call per
    person, alternating which goes first) so that load from other processes on a shared
    machine hits both alike. Reports wall-clock items/s and process CPU seconds.
    """
    requests = [r for g in groups for r in g]
    n = len(requests)
    option_probs(lm, requests[:2], batch_size=2)  # warm-up
    generate_answers(lm, requests[:2], batch_size=2, max_new_tokens=2)
    wall = {"logits": 0.0, "generate": 0.0}
    cpu = {"logits": 0.0, "generate": 0.0}
    outs: dict[str, list[Readout]] = {"logits": [], "generate": []}
    runs = {
        "logits": lambda g: option_probs(lm, g, batch_size=args.batch_size),
        "generate": lambda g: generate_answers(lm, g, batch_size=args.gen_batch_size),
    }
    for rep in range(repeats):
        for k, group in enumerate(groups):
            names = ["logits", "generate"] if (rep + k) % 2 == 0 else ["generate", "logits"]
            for name in names:
                w0, c0 = time.perf_counter(), time.process_time()
                out = runs[name](group)
                wall[name] += time.perf_counter() - w0
                cpu[name] += time.process_time() - c0
                if rep == 0:
                    outs[name].append(out)
    ans_l = np.concatenate([o.answers for o in outs["logits"]])
    ans_g = np.concatenate([o.answers for o in outs["generate"]])
    parsed = ans_g > 0
    tok = lm.tokenizer
    lens = [
        len(encode_prompt(tok, build_generate_prompt(tok, r.system_prompt, r.statement)))
        for r in requests
    ]
    return {
        "requests": n,
        "repeats": repeats,
        "mean_prompt_tokens": float(np.mean(lens)),
        "logits_wall_seconds": wall["logits"],
        "generate_wall_seconds": wall["generate"],
        "logits_cpu_seconds": cpu["logits"],
        "generate_cpu_seconds": cpu["generate"],
        "logits_items_per_s": n * repeats / wall["logits"],
        "generate_items_per_s": n * repeats / wall["generate"],
        "speedup": wall["generate"] / wall["logits"],
        "speedup_cpu_time": cpu["generate"] / cpu["logits"],
        "generate_parsed_fraction": float(parsed.mean()),
        "argmax_agrees_with_generate": (
            float((ans_l[parsed] == ans_g[parsed]).mean()) if parsed.any() else None
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=2)
    ap.add_argument("--items", type=int, default=30)
    ap.add_argument("--persona-items", type=int, default=30, help="items per person, persona")
    ap.add_argument("--batch-size", type=int, default=16, help="logits readout batch size")
    ap.add_argument("--gen-batch-size", type=int, default=8, help="generate readout batch size")
    ap.add_argument("--repeats", type=int, default=2, help="repeats, neutral setting")
    ap.add_argument("--persona-repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-persona", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "readout_speed.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    lm = load_model("smollm2", device=args.device)
    load_s = time.perf_counter() - t0
    statements, shown = _persons_and_items(args.persons, args.items)

    results: dict = {
        "model": f"{lm.model_id} ({lm.revision})",
        "device": str(lm.device),
        "dtype": str(lm.dtype),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_seconds": load_s,
        "batch_size_logits": args.batch_size,
        "batch_size_generate": args.gen_batch_size,
        "max_new_tokens": 15,
        "settings": {},
    }
    neutral = [
        [ReadRequest(NEUTRAL_SYSTEM_PROMPT, s) for s in statements] for _ in range(args.persons)
    ]
    results["settings"]["neutral"] = run_setting(lm, neutral, args.repeats, args)
    if not args.skip_persona and any(shown):
        persona = [
            [ReadRequest(_persona_prompt(lines), s) for s in statements[: args.persona_items]]
            for lines in shown
        ]
        results["settings"]["persona"] = run_setting(lm, persona, args.persona_repeats, args)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"model {results['model']} on {results['device']}, {results['torch_threads']} threads")
    for name, r in results["settings"].items():
        print(
            f"{name:8s} {r['requests']:3d} requests, ~{r['mean_prompt_tokens']:.0f} prompt tokens: "
            f"logits {r['logits_items_per_s']:.1f} items/s, "
            f"generate {r['generate_items_per_s']:.2f} items/s -> {r['speedup']:.1f}x "
            f"(CPU time {r['speedup_cpu_time']:.1f}x; generate parsed "
            f"{r['generate_parsed_fraction']:.0%})"
        )
    print(f"saved {out}")


if __name__ == "__main__":
    main()
