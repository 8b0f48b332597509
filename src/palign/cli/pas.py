"""CLI of PAS adapters: ``palign align``, ``palign generate``, ``palign chat``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from palign.cli.common import add_model_args, add_pas_args, data_args, emit, fmt_arg, pas_options
from palign.errors import PalignError


def cmd_align(args: argparse.Namespace) -> None:
    """Fit a PAS adapter for one person and save it."""
    from palign.data import check_inventory, check_semantics, load_dataset
    from palign.data.answers import person_from_answers, read_answers_file
    from palign.data.types import Dataset
    from palign.methods import MethodConfig, get_method
    from palign.models.loading import load_model
    from palign.steering.adapter import save_adapter

    if bool(args.person) == bool(args.answers):
        raise PalignError("give exactly one of --person ID or --answers FILE")
    if args.method not in ("pas", "pas+few-shot"):
        raise PalignError(
            f"palign align fits PAS adapters; --method must be pas or pas+few-shot, not {args.method!r}"
        )
    check_inventory(args.inventory)
    sem = check_semantics(args.semantics)
    opts = pas_options(args)
    opts.setdefault("steer_position", "all")
    method = get_method(args.method, MethodConfig(sem, args.seed, opts))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (out / "adapter_config.json").is_file():
        raise PalignError(f"{out} exists and is not an adapter folder; choose another --out")
    if args.answers:
        from palign.data import INVENTORIES  # noqa: F401

        if args.inventory == "ipip-neo":
            from palign.data import resolve_data_dir
            from palign.data.papi import ipip_inventory

            base_inv = ipip_inventory(resolve_data_dir(args.data, "ipip-neo"))
        else:
            from palign.data.sd3 import sd3_inventory

            base_inv = sd3_inventory()
        answers = read_answers_file(args.answers, base_inv)
        inv, person = person_from_answers(base_inv, answers)
        ds = Dataset(inv, [person], source=str(args.answers))
        who = "answers-file"
    else:
        ds = load_dataset(args.data, args.inventory)
        person = ds.person(args.person)
        who = person.id
    t = time.perf_counter()
    lm = load_model(
        args.model, device=args.device, dtype=args.dtype, load_in_4bit=args.load_in_4bit
    )
    method.setup(lm, ds)
    res = method.fit_result(lm, ds, person)
    seconds = time.perf_counter() - t
    extra = {
        "method": args.method,
        "model_spec": args.model,
        "system_prompt": method.system_prompt(ds, person),
        "alpha_grid": method.grid,
        "folds": method.folds,
        "steer_position": method.position,
        "shown_items": ds.inventory.shown_ids,
        "seconds": round(seconds, 2),
    }
    if res.alpha_selection == "oracle":
        extra["warning"] = "ORACLE: alpha chosen on the test items (not an honest evaluation)"
    rule = getattr(method, "rule", None) if res.alpha_selection == "tuned" else None
    if rule is not None:
        extra["alpha_rule"] = rule.record()
    save_adapter(
        out,
        res,
        model_id=lm.model_id,
        arch=method.arch,
        revision=lm.revision,
        inventory=ds.inventory.name,
        semantics=sem,
        person=who,
        extra=extra,
    )
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    payload = {
        "adapter": str(out),
        "person": who,
        "method": args.method,
        "model": lm.model_id,
        "alpha": res.alpha,
        "alpha_selection": res.alpha_selection,
        "alpha_rule": rule.rule_id if rule is not None else None,
        "validation_errors": {
            format(k, "g"): round(v, 4) for k, v in res.validation_errors.items()
        },
        "heads": [list(h) for h in res.fit.heads],
        "steer_position": method.position,
        "bytes": size,
        "seconds": round(seconds, 2),
    }
    errs = ", ".join(f"{k}: {v:.3f}" for k, v in payload["validation_errors"].items()) or "-"
    human = (
        f"aligned {lm.model_id} to person {who} with {args.method}: alpha {res.alpha:g} "
        f"({res.alpha_selection}{': ' + rule.rule_id if rule is not None else ''}), "
        f"{len(res.fit.heads)} heads, steering at {method.position} "
        f"positions, {size:,} bytes -> {out}\n"
        f"held-out shown-item error per alpha: {errs}\n"
        f"top heads (layer, head): {', '.join(f'({a},{b})' for a, b in res.fit.heads[:8])}"
        f"{' ...' if len(res.fit.heads) > 8 else ''}\n"
        f"talk to it: palign chat --adapter {out}"
    )
    emit(args, payload, human)


def _aligned(args: argparse.Namespace):
    from palign.chat import AlignedModel

    am = AlignedModel.from_adapter(
        args.adapter,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        force=args.force,
        position=args.steer_position,
    )
    am.alpha = args.alpha
    if args.system is not None:
        am.system_prompt = args.system or None
    return am


def _steers(am) -> bool:
    """Whether the model's adapter is a PAS steering adapter (not a LoRA one)."""
    from palign.steering.adapter import PASAdapter

    return isinstance(am.adapter, PASAdapter)


def cmd_generate(args: argparse.Namespace) -> None:
    """One answer from an aligned model."""
    am = _aligned(args)
    stream = args.format != "json" and sys.stdout.isatty()
    text = am.generate(
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        on_text=(lambda s: print(s, end="", flush=True)) if stream else None,
    )
    if stream:
        print()
        return
    payload = {
        "adapter": args.adapter,
        "alpha": am.alpha if am.alpha is not None else am.adapter.alpha,
        "steer_position": am.steer_position if _steers(am) else None,
        "prompt": args.prompt,
        "text": text,
    }
    emit(args, payload, text)


def cmd_chat(args: argparse.Namespace) -> None:
    """Interactive chat with an aligned model (streamed tokens)."""
    am = _aligned(args)
    a = am.alpha if am.alpha is not None else am.adapter.alpha
    print(
        f"chatting with {am.lm.model_id} aligned to person {am.adapter.config.get('person')} "
        + (f"(alpha {a:g}, steering at {am.steer_position} positions)" if _steers(am) else "(LoRA)")
        + "; /alpha X changes the strength, /reset forgets, /quit ends",
        file=sys.stderr,
    )
    while True:
        try:
            line = input("you> " if sys.stdin.isatty() else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            am.history.clear()
            continue
        if line.startswith("/alpha"):
            try:
                am.alpha = float(line.split()[1])
                print(f"alpha = {am.alpha:g}", file=sys.stderr)
            except (IndexError, ValueError):
                print("usage: /alpha NUMBER", file=sys.stderr)
            continue
        print("bot> ", end="", flush=True)
        am.generate(
            line,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            on_text=lambda s: print(s, end="", flush=True),
            remember=True,
        )
        print()


def register(sub: argparse._SubParsersAction) -> None:
    """Add align / generate / chat to the parser."""
    p = sub.add_parser(
        "align",
        help="fit a PAS adapter for one person (a PAPI person or your own answers)",
        description="Fit PAS for one person and save a small adapter folder "
        "(adapter_config.json + adapter.safetensors). Alpha is chosen on held-out shown items.",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument("--person", help="a person id of the data set")
    who.add_argument(
        "--answers",
        metavar="FILE",
        help="a new person's answers: JSON {item id: 1..5} or CSV item,answer "
        "(answers to the statements, 5 = Very Accurate; any subset of the items)",
    )
    p.add_argument("--method", default="pas", help="pas (default) or pas+few-shot")
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of probe splits and folds")
    add_model_args(p)
    data_args(p)
    add_pas_args(p)
    fmt_arg(p)
    p.set_defaults(func=cmd_align)

    for name, helptext in (
        ("generate", "one answer from an aligned model"),
        ("chat", "talk to an aligned model (interactive, streamed)"),
    ):
        p = sub.add_parser(name, help=helptext)
        if name == "generate":
            p.add_argument("prompt", help="the user message")
        p.add_argument("--adapter", required=True, help="adapter folder written by 'palign align'")
        p.add_argument("--model", default=None, help="base model (default: the one recorded)")
        p.add_argument("--device", default="auto")
        p.add_argument("--dtype", default="auto")
        p.add_argument("--alpha", type=float, default=None, help="steering strength override")
        p.add_argument(
            "--steer-position",
            default=None,
            choices=("all", "last"),
            help="override where the shift is added: all (every prompt position and every new "
            "token, the paper's) or last (default: the position the adapter was fitted with)",
        )
        p.add_argument(
            "--system",
            default=None,
            help="system prompt override ('' for none; default: the adapter's)",
        )
        p.add_argument("--max-new-tokens", type=int, default=200)
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--force",
            action="store_true",
            help="accept a base model whose id/revision differs from the recorded one",
        )
        if name == "generate":
            fmt_arg(p)
        p.set_defaults(func=cmd_generate if name == "generate" else cmd_chat)
