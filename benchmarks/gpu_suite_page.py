"""The markdown page of ``benchmarks/gpu_suite.py`` (``docs/results/gpu_suite.md``), written
from the run's JSON: what runs, the expected time of each part on an H100 (labelled as an
expectation), how to run it on a lent device in one call, and this run's figures, each naming
the device it ran on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PART_TITLES = {
    "setup": "build the random 8B-shaped model, load PAPI, capture the contrastive activations",
    "pas": "PAS speed like for like: the original re-stated faithfully vs palign pas+few-shot "
    "(grid and honest protocol), palign --readout generate, pas; peak memory of each",
    "serve": "palign serve's engine: 1 / 8 / 64 personalities mixed in one batch, 32 streams; "
    "tok/s, p50/p99, equal to solo, mixed / one",
    "train": "seconds per DPO and per GRPO step (LoRA, batch 16); paper recipe per person vs PAS",
    "ray": "a small palign eval through --workers 1 (GPU actor) vs one process: identical files",
    "4bit": "--load-in-4bit loads the same weights (bitsandbytes NF4) and reads; memory",
}

RUN_ON_DEVICE = """\
The device machine reaches no network, so the PAPI release, a tokenizer folder and any
missing wheels travel with the working tree (e.g. untracked folders `.bench/papi`,
`.bench/tokenizer` and `.whl/`, named in the device tool's `carry` when git ignores them).
One call, with a timeout that leaves room for one rerun (the suite's own budget is 540 s):

```bash
pip install --no-index --find-links .whl transformers trl peft datasets accelerate ray \\
    bitsandbytes scikit-learn 2>/dev/null; \\
PYTHONPATH=src timeout 590 python benchmarks/gpu_suite.py --data .bench/papi \\
    --tokenizer .bench/tokenizer --out "$OUT"
```

(device tool: `timeout_s` 600). It writes `gpu_suite.json`, `gpu_suite.md` and
`gpu_suite.log` into `$OUT` after every part, so a run cut short keeps what finished; commit
the three files under `docs/results/`. A part whose package is missing (trl, ray,
bitsandbytes) records the reason and the others still run. To rerun only the parts that
failed, name them with a smaller budget, e.g. `--parts serve,train --budget-s 200` (such a
run's files hold only those parts, so keep the first run's files beside them)."""


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def _minutes(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.1f} min"


def _status(part: dict[str, Any]) -> str | None:
    if part.get("status") == "ok":
        return None
    if part.get("status") == "skipped":
        return f"skipped: {part.get('reason')}"
    return f"error: `{part.get('error')}`"


def render(res: dict[str, Any]) -> str:
    """The page for one run's results."""
    smoke = res.get("smoke")
    dev = res["device"]
    label = f"{dev}, CPU smoke" if smoke else dev
    parts = res.get("parts", {})
    L: list[str] = ["# GPU suite: every GPU claim of palign, measured side by side in one run", ""]
    if smoke or res.get("device_type") != "cuda":
        L += [
            "> **No GPU run has happened yet.** The suite is ready and its CPU smoke runs in "
            "CI; the figures below come from that smoke (a tiny random Llama on a shared "
            "CPU): they show that every part runs and that the equality checks hold, **not** "
            "speed. The GPU figures are to come on the next lent device; until then no GPU "
            "figure of these parts is claimed.",
            "",
        ]
    else:
        L += [
            f"> Measured on **{dev}** on {res['created']}, all parts in one run "
            f"({_f(res.get('total_s'), 0)} s), on an 8B Llama-3 shape with random weights.",
            "",
        ]
    L += [
        "Command of the figures below:",
        "",
        f"```bash\n{res['command']}\n```",
        "",
        f"Weights: {res['weights']}. The machine that runs the suite has no model hub, so the "
        "weights are random: timings depend on the shape, dtype and token counts, not on the "
        "weight values; no answer quality is measured here. Token ids come from the SmolLM2 "
        "tokenizer (`--tokenizer DIR` for another).",
        "",
        "## Parts and their expected time on one H100",
        "",
        "The times are **expectations** worked out from the sizes (not measurements); the "
        "suite also uses them to share its 540 s budget and to skip, with the reason "
        "recorded, a part that no longer fits.",
        "",
        "| part | what it measures | expected on one H100 (not measured) |",
        "|---|---|---|",
    ]
    for k, title in PART_TITLES.items():
        L.append(f"| {k} | {title} | ~{res['expected_h100_s'].get(k, '?')} s |")
    L += [
        f"| total | | ~{sum(res['expected_h100_s'].values())} s (budget 540 s) |",
        "",
        "## How to run it on a lent device (one call)",
        "",
        RUN_ON_DEVICE,
        "",
        f"## This run: {label}",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}. "
        f"Raw figures: [gpu_suite.json](gpu_suite.json), log: [gpu_suite.log](gpu_suite.log).",
        "",
    ]
    L += _pas(parts.get("pas", {}), label, parts.get("setup", {}).get("weights_gb"))
    L += _serve(parts.get("serve", {}), label)
    L += _train(parts.get("train", {}), label)
    L += _ray(parts.get("ray", {}), label)
    L += _fourbit(parts.get("4bit", {}), label)
    return "\n".join(L).rstrip() + "\n"


def _pas(p: dict[str, Any], label: str, weights_gb: float | None) -> list[str]:
    L = ["### 1. PAS speed, like for like", ""]
    if _status(p):
        return [*L, _status(p) or "", ""]
    v = p["variants"]
    L += [
        f"{p['test_items']} test items, alphas {p['alphas']}, few-shot prompt "
        f"~{p['fewshot_prompt_tokens']} tokens, capture {_f(p['capture_s'])} s ({label}). "
        "300 persons is a **projection** (capture + 300 x seconds per person measured on the "
        "persons or subset stated).",
        "",
        "| variant | measured | s per person | 300 persons (projected) | peak GPU GB | device |",
        "|---|---|---|---|---|---|",
    ]
    for name in (
        "original",
        "palign_generate",
        "grid_fewshot_all",
        "honest_fewshot_all",
        "honest_pas_all",
    ):
        x = v.get(name)
        if not x:
            continue
        measured = x.get("measured") or f"{x['persons_measured']} person(s)"
        L.append(
            f"| {x['what']} | {measured} | {_f(x['s_per_person'])} | "
            f"{_minutes(x['projected_300_s'])} | {_f(x['peak_gb'])} | {label} |"
        )
    r = p["ratios"]
    L += [
        "",
        f"Speed ratios, original / palign, same device and run ({label}): like for like "
        f"(grid) **{r['like_for_like']}x**, palign's honest pas+few-shot "
        f"**{r['honest_fewshot']}x**, palign with the original's decoding (`--readout "
        f"generate`, no prefix shared) **{r['with_generate_readout']}x**. Memory budget: "
        f"{p['memory_budget']['note']}; weights: {_f(weights_gb)} GB ({label}).",
        "",
    ]
    return L


def _serve(p: dict[str, Any], label: str) -> list[str]:
    L = ["### 2. Serving many personalities", ""]
    if _status(p):
        return [*L, _status(p) or "", ""]
    L += [
        f"{p['engine']}; {p['vectors']}; greedy, {p['max_tokens']} new tokens, "
        f"{p['requests_per_stream']} requests per stream in turn. p99 is stated only with "
        "at least 100 samples; equal-to-solo compares token ids with the same request served "
        "alone.",
        "",
        "| personalities | streams | requests | tok/s | p50 s | p99 s | largest batch | "
        "equal to solo | tok/s vs one | device |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratio = p.get("ratio_mixed_vs_one", {})
    for c in p["cells"]:
        if "tok_per_s" not in c:
            L.append(f"| {c['personalities']} | {c.get('skipped')} | | | | | | | | {label} |")
            continue
        L.append(
            f"| {c['personalities']} | {c['streams']} | {c['completed']}/{c['requests']} | "
            f"{_f(c['tok_per_s'], 1)} | {_f(c['p50_s'], 3)} | "
            f"{_f(c['p99_s'], 3) if c['p99_s'] is not None else '– (< 100 samples)'} | "
            f"{c['max_batch_rows']} | {c['solo_equal']}/{c['solo_checked']} | "
            f"{ratio.get(str(c['personalities']), 1.0 if c['personalities'] == 1 else '–')} | "
            f"{label} |"
        )
    L += ["", f"All sampled requests equal to solo: **{p['solo_equal_all']}**.", ""]
    return L


def _train(p: dict[str, Any], label: str) -> list[str]:
    L = ["### 3. Training step cost", ""]
    if _status(p):
        return [*L, _status(p) or "", ""]
    L += [
        f"LoRA {p['lora']}; the paper's recipe is {p['paper_recipe']}, projected per person as "
        "250 x the median step after the first + the measured overhead (data, reference "
        "log-probabilities, saving). **Projection**, not a measured 250-step run."
        + (f" Note: {p['batch_note']}." if p.get("batch_note") else ""),
        "",
        "| trainer | steps timed | s per step | paper recipe per person (projected) | "
        "x PAS per person | peak GPU GB | device |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("dpo", "grpo"):
        x = p.get(name, {})
        if "s_per_step" not in x:
            L.append(f"| {name} | {x.get('skipped', '–')} | | | | | {label} |")
            continue
        L.append(
            f"| {name} (batch {x['config']['batch']}) | {len(x['step_s'])} | "
            f"{_f(x['s_per_step'], 3)} | {_minutes(x['projected_paper_recipe_s_per_person'])} | "
            f"{_f(p.get(f'{name}_vs_pas'), 1)} | {_f(x['peak_gb'])} | {label} |"
        )
    if p.get("pas_s_per_person"):
        L += [
            "",
            f"PAS per person: {_f(p['pas_s_per_person'], 3)} s ({p['pas_source']}, {label}).",
        ]
    L.append("")
    return L


def _ray(p: dict[str, Any], label: str) -> list[str]:
    L = ["### 4. Ray", ""]
    if _status(p):
        return [*L, _status(p) or "", ""]
    runs = p["runs"]
    L += [
        f"`{p['command']}` on a {p['model']}, {label}: one process "
        f"{_f(runs['single']['wall_s'], 1)} s, one Ray worker ({p['actor_path'].upper()} actor "
        f"path) {_f(runs['ray_1']['wall_s'], 1)} s; per-person files identical "
        f"{p['identical_persons']}/{p['persons']} (**{p['identical']}**).",
        "",
    ]
    return L


def _fourbit(p: dict[str, Any], label: str) -> list[str]:
    L = ["### 5. 4-bit loading", ""]
    if _status(p):
        return [*L, _status(p) or "", ""]
    L += [
        f"{p['path']}, {label}: 4-bit weights {_f(p['weights_4bit_gb'])} GB vs bf16 "
        f"{_f(p['bf16_weights_gb'])} GB ({_f(p['ratio_4bit_vs_bf16'], 3)}x), load "
        f"{_f(p['load_s'], 1)} s, {p['read_items']} items read in {_f(p['read_s'], 2)} s "
        f"(finite probabilities: {p['probs_finite']}), peak {_f(p['peak_gb'])} GB.",
        "",
    ]
    return L


def write_page(res: dict[str, Any], path: Path) -> None:
    """Write the page (through a temporary file)."""
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render(res), encoding="utf-8")
    tmp.replace(path)
