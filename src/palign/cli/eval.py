"""``palign eval``, ``palign compare`` and ``palign demo``."""

from __future__ import annotations

import argparse
from typing import Any

from palign.cli.common import (
    add_model_args,
    add_pas_args,
    add_person_args,
    add_train_args,
    build_method,
    data_args,
    emit,
    fmt_arg,
    full_fields,
    pas_options,
    select_persons,
    train_options,
)
from palign.errors import PalignError


def cmd_eval(args: argparse.Namespace) -> None:
    """Run one method on one model for some persons; resumable."""
    from palign.data import check_inventory, check_semantics
    from palign.eval.runs import READOUTS, RunConfig, run_eval

    check_inventory(args.inventory)
    sem = check_semantics(args.semantics)
    if args.readout not in READOUTS:
        raise PalignError(f"unknown readout {args.readout!r}; use one of: {', '.join(READOUTS)}")
    scaled = args.workers is not None or args.ray_address is not None
    if scaled:
        from palign.scale import require_ray

        require_ray()  # before any work: a missing extra is a one-line error
        if args.workers is not None and args.workers < 1:
            raise PalignError("--workers must be at least 1")
    opts = {**pas_options(args), **train_options(args)}
    if args.persona_model:
        opts["persona_model"] = args.persona_model
    if args.persona_source:
        opts["persona_source"] = args.persona_source
    if args.method.startswith("pas") and args.readout == "generate":
        opts["selection_readout"] = "generate"  # alpha scored with the run's readout
    out = args.out or f"runs/{args.method}-{args.model.replace('/', '_')}-{args.inventory}-{sem}"
    method = build_method(args, sem, opts, out)
    ds, persons = select_persons(args)
    if hasattr(method, "persons_planned"):  # training baselines: project CPU time over all
        method.persons_planned = len(persons)
    cfg = RunConfig(
        method=args.method,
        model=args.model,
        inventory=args.inventory,
        semantics=sem,
        readout=args.readout,
        seed=args.seed,
        persons=[p.id for p in persons],
        data=args.data,
        batch_size=args.batch_size,
        person_batch=args.person_batch,
        device=args.device,
        dtype=args.dtype,
        options=opts,
        max_items=args.max_items,
        load_in_4bit=args.load_in_4bit,
        **full_fields(args),
    )
    if scaled:
        from palign.scale import run_eval_ray

        res = run_eval_ray(
            cfg,
            out,
            workers=args.workers,
            address=args.ray_address,
            dataset=ds,
            method=method,
            progress=not args.quiet,
        )
    else:
        res = run_eval(cfg, out, dataset=ds, method=method, progress=not args.quiet)
    rep = res["report"]
    human = (
        f"{args.method} on {args.model}: {rep['n_persons']} persons, {sem} semantics, "
        f"{args.readout} readout -> {out}/results.json\n\n"
        + reports_table_from_dict([rep], ds.inventory.traits)
        + f"\n\n{res['timings']['seconds_per_person'] or 0:.2f} s per person; answer histogram "
        + " ".join(f"{k}:{v}" for k, v in rep["histogram"].items())
    )
    emit(args, res, human)


def reports_table_from_dict(reps: list[dict[str, Any]], traits: list[str]) -> str:
    """Table of report dicts (``Report.to_dict()`` form)."""
    from palign.eval.compare import _f
    from palign.eval.report import format_table

    headers = ["method", *traits, "mean", "sum", "exact", "unparsed", "persons"]
    rows = [
        [
            r["name"],
            *[_f(r["traits"].get(t)) for t in traits],
            _f(r["mean"]),
            _f(r["sum"]),
            _f(r["exact_match"]),
            _f(r["unparsed_rate"]),
            r["n_persons"],
        ]
        for r in reps
    ]
    return format_table(headers, rows)


def cmd_demo(args: argparse.Namespace) -> None:
    """Align a model to one person with PAS and show the person, the numbers, the answers and
    the words (:mod:`palign.demo`)."""
    from palign.demo import DEMO_ALPHA_GRID, DEMO_MAX_ITEMS, DemoConfig, render_text, run_demo

    opts = pas_options(args)
    # the demo's quick protocol (stated in its header; the full evaluation's command is printed)
    if (
        opts.get("alpha_selection", "heldout") == "heldout"
        and "alpha_grid" not in opts
        and "alphas_from" not in opts  # reused alphas: the source's grid
    ):
        opts["alpha_grid"] = list(DEMO_ALPHA_GRID)
    max_items = args.max_items if args.max_items is not None else DEMO_MAX_ITEMS
    quiet = args.format == "json"
    cfg = DemoConfig(
        model=args.model,
        person=args.person,
        data=args.data,
        inventory=args.inventory,
        semantics=args.semantics,
        out=args.out,
        max_items=max_items,
        pas_options=opts,
        few_shot=args.few_shot,
        seed=args.seed,
        question=args.question,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        dtype=args.dtype,
    )
    res = run_demo(cfg, progress=not quiet, log=None if not quiet else (lambda s: None))
    emit(args, res, render_text(res))


def cmd_compare(args: argparse.Namespace) -> None:
    """Several runs side by side with the reference predictors."""
    from palign.eval.compare import DEFAULT_REFERENCES, compare_runs, compare_table

    refs = args.references.split(",") if args.references else list(DEFAULT_REFERENCES)
    payload = compare_runs(args.runs, data=args.data, references=refs, full=args.full)
    emit(args, payload, compare_table(payload))


def register(sub: argparse._SubParsersAction) -> None:
    """Add eval, compare and demo to the parser."""
    p = sub.add_parser(
        "eval",
        help="evaluate a method on a model for some persons (resumable)",
        description="Evaluate a method on a model. Per-person results are written as they "
        "finish; rerunning the same command resumes. Writes OUT/results.json with the full "
        "configuration.",
    )
    p.add_argument(
        "--method",
        required=True,
        help="vanilla, few-shot, personality-prompt, pas, pas+few-shot, pas+calibrated, "
        "vanilla+calibrated (logits readout only), dpo, grpo (training "
        "baselines: LoRA adapters under OUT/adapters; ppo is unavailable with TRL 1.x)",
    )
    add_model_args(p)
    add_person_args(p)
    data_args(p)
    p.add_argument(
        "--readout",
        default="logits",
        help="logits (default: one forward per item, option probabilities) or "
        "generate (15-token greedy decoding + parser, as the paper)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--out", default=None, help="run folder (default runs/<method>-<model>-...)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward (default 32)")
    p.add_argument(
        "--person-batch",
        type=int,
        default=4,
        help="persons whose items share forward passes (default 4)",
    )
    p.add_argument(
        "--persona-model",
        default=None,
        help="personality-prompt: model that writes the personas (implies --persona-source "
        "model; default: the evaluated model)",
    )
    p.add_argument(
        "--persona-source",
        default=None,
        choices=("release", "answers", "model"),
        help="personality-prompt: release (the PAPI paragraphs, written from the stored "
        "values: only with --semantics paper; its default), answers (a description of the "
        "person's trait and facet scores from the shown answers; the default under agreement) "
        "or model (written by --persona-model from the shown answers under the semantics)",
    )
    p.add_argument(
        "--max-items",
        type=int,
        default=None,
        help="only this many test items, spread over the traits (smoke runs; default: all)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="evaluate on N Ray workers (one model copy each; one GPU each when the cluster "
        "has GPUs); results identical to one process; needs pip install 'palign[ray]'",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="run on an existing Ray cluster (e.g. ray://HEAD:10001 or auto); default "
        "--workers: one per GPU of the cluster",
    )
    add_pas_args(p)
    add_train_args(p)
    fmt_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="several runs side by side with the reference predictors")
    p.add_argument("runs", nargs="+", metavar="DIR", help="run folders written by 'palign eval'")
    p.add_argument("--data", metavar="DIR", help="data folder (default: the first run's)")
    p.add_argument(
        "--full",
        metavar="FILE",
        default=None,
        help="runs over persons of a full-release file: that file, if it moved since (default: "
        "the recorded path; its sha256 must match the recorded one)",
    )
    p.add_argument(
        "--references",
        default=None,
        help="comma-separated reference predictors (default: constant-3,item-median,"
        "facet-mean,ridge)",
    )
    fmt_arg(p)
    p.set_defaults(func=cmd_compare)

    from palign.demo import DEMO_MODEL

    p = sub.add_parser(
        "demo",
        help="align a model to one PAPI person (PAS) and show the person, the numbers, the "
        "answers and the words",
        description="Align a model to one PAPI person with PAS and show, beside vanilla: the "
        "person's Big Five profile (terminal chart and a PNG under OUT), the per-trait error of "
        "vanilla, PAS and the reference predictors (as 'palign eval' + 'palign compare'), three "
        "held-out statements where vanilla and PAS disagree (a fixed rule), both models' answers "
        "to one open question, and the commands to go on. Runs are resumable.",
    )
    p.add_argument(
        "--person",
        default=None,
        help="PAPI person id (default: the first person of the test set)",
    )
    p.add_argument(
        "--model",
        default=DEMO_MODEL,
        help=f"model alias (see 'palign models'; default: {DEMO_MODEL}), hub id, folder or "
        ".gguf file",
    )
    p.add_argument(
        "--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda..."
    )
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument(
        "--out",
        default="runs/demo",
        help="output folder: runs under OUT/<model>/, the profile PNG beside them "
        "(default runs/demo)",
    )
    p.add_argument(
        "--max-items",
        type=int,
        default=None,
        help="test items read, spread over the traits (default 60 of the 180; --max-items 180 "
        "for all); with the default held-out alpha search the demo's grid is 0,1 unless "
        "--alpha-grid is given",
    )
    p.add_argument(
        "--few-shot",
        action="store_true",
        help="also evaluate the few-shot prompt (the person's shown answers in the prompt)",
    )
    p.add_argument(
        "--question",
        default="How do you spend a free evening?",
        help="the open question both models answer (default: How do you spend a free evening?)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=60,
        help="bound on each answer to the open question (greedy; default 60)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    add_pas_args(p)
    data_args(p)
    fmt_arg(p)
    p.set_defaults(func=cmd_demo)
