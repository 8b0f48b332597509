"""``palign generate-eval``, ``palign judge``, ``palign judge-validate`` and
``palign judge-agreement``."""

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


def _f(x: Any, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _ci(d: dict[str, Any]) -> str:
    if d.get("mean") is None:
        return "-"
    if d.get("lo") is None:
        return f"{d['mean']:.2f}"
    return f"{d['mean']:.2f} [{d['lo']:.2f}, {d['hi']:.2f}]"


def cmd_generate_eval(args: argparse.Namespace) -> None:
    """Aligned free-text answers to open questions about the test statements; resumable."""
    from palign.data import check_inventory, check_semantics
    from palign.judge.generate import GenerateConfig, run_generate

    check_inventory(args.inventory)
    sem = check_semantics(args.semantics)
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise PalignError("--max-new-tokens and --batch-size must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise PalignError("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.max_items is not None and args.max_items < 1:
        raise PalignError("--max-items must be at least 1")
    opts = {**pas_options(args), **train_options(args)}
    # adapters: --adapters DIR (another run's, e.g. palign eval's OUT/adapters), else the
    # configuration-keyed cache shared by every generate-eval of the same training setup
    method = build_method(args, sem, opts, None, adapters=args.adapters)
    ds, persons = select_persons(args)
    if hasattr(method, "persons_planned"):  # training baselines: project CPU time over all
        method.persons_planned = len(persons)
    cfg = GenerateConfig(
        method=args.method,
        model=args.model,
        inventory=args.inventory,
        semantics=sem,
        seed=args.seed,
        persons=[p.id for p in persons],
        data=args.data,
        max_items=args.max_items,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        share_prefix=args.share_prefix,
        device=args.device,
        dtype=args.dtype,
        load_in_4bit=args.load_in_4bit,
        options=opts,
        **full_fields(args),
    )
    res = run_generate(cfg, args.out, dataset=ds, method=method, progress=not args.quiet)
    t = res["timings"]
    human = (
        f"{args.method} on {args.model}: {res['n_persons']} persons x {res['n_items']} items = "
        f"{res['n_generations']} answers (temperature {cfg.temperature:g}, max "
        f"{cfg.max_new_tokens} new tokens, seed {cfg.seed}, question {cfg.question_version}) "
        f"-> {args.out}/generations.jsonl\n"
        f"{_f(t['seconds_per_person'])} s per person; empty answers "
        f"{_f(res['empty_rate'], 3)}\n"
        f"Judge them: palign judge {args.out} --judge-model smollm2   (local), or "
        f"--judge-model gpt-4o --base-url https://api.openai.com/v1"
    )
    emit(args, res, human)


def _backend(args: argparse.Namespace, model: str | None = None, url: str | None = None) -> Any:
    """The judge (or generator) backend of ``model`` at ``url`` (default: the judge flags)."""
    from palign.judge.client import CachedJudge, LocalJudge, OpenAIJudge

    if model is None:
        model, url = args.judge_model, args.base_url
    if url:
        backend: Any = OpenAIJudge(
            model,
            url,
            concurrency=args.concurrency,
            retries=args.retries,
            timeout=args.timeout,
            backoff=args.backoff,
        )
    else:
        from palign.models.loading import load_model

        lm = load_model(model, device=args.device, dtype=args.dtype)
        backend = LocalJudge(lm, batch_size=args.batch_size)
    if args.no_cache:
        return backend
    return CachedJudge(backend)


def _score_table(res: dict[str, Any]) -> str:
    from palign.eval.report import format_table

    headers = ["trait", "items", "unparsed", "errors", "score [95% CI]", "weighted [95% CI]"]
    rows = []
    for t, d in [*res["traits"].items(), ("all", res["overall"])]:
        rows.append(
            [t, d["n_items"], d["unparsed"], d["errors"], _ci(d["score"]), _ci(d["weighted"])]
        )
    return format_table(headers, rows)


def _stance_human(args: argparse.Namespace, res: dict[str, Any]) -> str:
    """The stance mode's table and summary lines."""
    from palign.eval.report import format_table
    from palign.judge.run import WEIGHTED_AT

    err, errw, cnt = res["error"], res["error_weighted"], res["counts"]
    headers = ["trait", "items", "unparsed", "errors", "MAE [95% CI]", "weighted MAE [95% CI]"]
    rows = []
    for t in [*err["traits"], "all"]:
        c = cnt["overall"] if t == "all" else cnt["traits"][t]
        e = err["overall"] if t == "all" else err["traits"][t]
        w = errw["overall"] if t == "all" else errw["traits"][t]
        rows.append([t, c["n_items"], c["unparsed"], c["errors"], _ci(e), _ci(w)])
    resolved = ", ".join(res["judge"]["resolved_models"]) or "-"
    req = res["requests"]
    lines = [
        f"stance judge {res['judge']['model']} ({res['judge']['kind']}; answered by {resolved}) "
        f"on {args.dir}: {res['n_items']} items of {res['n_persons']} persons, protocol "
        f"{args.protocol}, stance prompt {res['prompts']['stance_version']}",
        "",
        format_table(headers, rows),
        "",
        "MAE = |the judge's 1-5 reading of the free text - the person's own answer| (unparsed "
        f"excluded); weighted = sum k*p_k over the five choices at {WEIGHTED_AT[args.protocol]}.",
        f"per person, sum of the trait MAEs (the multiple-choice tables' scale): "
        f"{_ci(err['person_sum'])} over {err['n_persons_complete']} persons with every trait "
        f"read; weighted {_ci(errw['person_sum'])}",
    ]
    if res["mc_error"] is not None:
        lines.append(
            "the method's multiple-choice answers on the same rows: sum of trait MAEs "
            f"{_ci(res['mc_error']['person_sum'])}"
        )
    c = res["consistency"]
    if c is None:
        lines.append("consistency: the generations record no multiple-choice answer (mc_answer)")
    else:
        lines.append(
            f"consistency (multiple-choice answer vs the reading of its own free text, "
            f"{c['n_both']} items): MAE {_f(c['mae'], 3)}, exact {_f(c['exact_agreement'], 3)}, "
            f"within one {_f(c['within_one'], 3)}, Spearman {_f(c['spearman'], 3)}"
        )
    lines.append(
        f"unparsed rate {_f(res['unparsed_rate'], 3)}; requests {req['total']} (cached "
        f"{req['cached']}, errors {req['errors']}); {_f(res['timings']['judge_s'])} s "
        f"-> {res['items_file']}"
    )
    if req["errors"]:
        lines.append(f"{req['errors']} items failed after the retries; rerun to retry them")
    return "\n".join(lines)


def cmd_judge(args: argparse.Namespace) -> None:
    """Rate generations on the 1-6 rubric (or compare two folders pairwise)."""
    from palign.judge.run import WEIGHTED_AT, judge_generations, judge_pairwise

    if (args.max_tokens is not None and args.max_tokens < 1) or args.temperature < 0:
        raise PalignError("--max-tokens must be at least 1 and --temperature >= 0")
    if args.versus and args.mode != "rubric":
        raise PalignError("--versus compares two folders pairwise; drop --mode stance")
    judge = _backend(args)
    kw = {
        "name": args.name,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "logprobs": not args.no_logprobs,
        "progress": not args.quiet,
    }
    if args.versus:
        ds = None
        if args.data:
            from palign.data import load_dataset
            from palign.judge.generate import load_generations

            ds = load_dataset(args.data, load_generations(args.dir)[0].get("inventory", "ipip-neo"))
        res = judge_pairwise(args.dir, args.versus, judge, dataset=ds, **kw)
        wr = res["win_rate_a"]
        human = (
            f"pairwise judge {res['judge']['model']}: {res['a']['method']} ({args.dir}) vs "
            f"{res['b']['method']} ({args.versus}), both orders\n"
            f"win rate of {res['a']['method']}: {_ci(wr)} over {res['n_decided']} of "
            f"{res['n_pairs']} pairs (ties {res['ties']}); unparsed "
            f"{_f(res['unparsed_rate'], 3)}; first position picked "
            f"{_f(res['first_position_rate'], 3)}\n"
            f"requests {res['requests']['total']} (cached {res['requests']['cached']}, errors "
            f"{res['requests']['errors']}) -> {res['items_file']}"
        )
    elif args.mode == "stance":
        from palign.judge.stance import judge_stance

        res = judge_stance(args.dir, judge, protocol=args.protocol, **kw)
        human = _stance_human(args, res)
    else:
        res = judge_generations(args.dir, judge, protocol=args.protocol, **kw)
        req = res["requests"]
        resolved = ", ".join(res["judge"]["resolved_models"]) or "-"
        human = (
            f"judge {res['judge']['model']} ({res['judge']['kind']}; answered by {resolved}) on "
            f"{args.dir}: {res['n_items']} items, protocol {args.protocol}, rubric "
            f"{res['prompts']['rubric_version']}, temperature {args.temperature:g}\n\n"
            + _score_table(res)
            + "\n\nscore = the clean-parsed choice 1-6 (unparsed excluded); weighted = sum k*p_k "
            f"over the six choices at {WEIGHTED_AT[args.protocol]} (log-probabilities; '-' "
            "where none)."
            f"\nunparsed rate {_f(res['unparsed_rate'], 3)}; requests {req['total']} (cached "
            f"{req['cached']}, errors {req['errors']}); {_f(res['timings']['judge_s'])} s "
            f"-> {res['items_file']}"
        )
        if req["errors"]:
            human += f"\n{req['errors']} items failed after the retries; rerun to retry them"
    emit(args, res, human)


def cmd_agreement(args: argparse.Namespace) -> None:
    """Agreement between two judges' per-item scores on the same generations."""
    from palign.judge.run import agreement

    res = agreement(args.judge_1, args.judge_2)
    human = (
        f"{res['n_both_parsed']} items parsed by both judges (of {res['n_common']} in common)\n"
        f"Spearman rho {_f(res['spearman'], 3)} (p {_f(res['spearman_p'], 3)}); exact agreement "
        f"{_f(res['exact_agreement'], 3)}; within one point {_f(res['within_one'], 3)}; mean "
        f"difference (1 - 2) {_f(res['mean_difference'], 3)}\n"
        f"weighted scores: {res['n_both_weighted']} items, Spearman "
        f"{_f(res['spearman_weighted'], 3)}"
    )
    emit(args, res, human)


def cmd_judge_validate(args: argparse.Namespace) -> None:
    """Known-answer texts (written by a generator at each stance 1..5) read by a judge."""
    from palign.data import check_inventory, load_dataset
    from palign.judge.validate import (
        ValidateConfig,
        judge_texts,
        markdown_table,
        report,
        write_texts,
    )

    check_inventory(args.inventory)
    if args.items < 1 or args.gen_max_tokens < 1 or args.batch_size < 1:
        raise PalignError("--items, --gen-max-tokens and --batch-size must be at least 1")
    if args.gen_temperature < 0 or args.temperature < 0:
        raise PalignError("--gen-temperature and --temperature must be >= 0")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise PalignError("--max-tokens must be at least 1")
    ds = load_dataset(args.data, args.inventory)
    cfg = ValidateConfig(
        generator=args.generator,
        generator_base_url=args.generator_base_url,
        inventory=args.inventory,
        items=args.items,
        seed=args.seed,
        max_new_tokens=args.gen_max_tokens,
        temperature=args.gen_temperature,
        batch_size=args.batch_size,
        data=args.data,
    )
    gen = _backend(args, args.generator, args.generator_base_url)
    texts, n_new = write_texts(cfg, args.out, gen, ds.inventory, progress=not args.quiet)
    judge = gen
    if (args.judge_model, args.base_url) != (args.generator, args.generator_base_url):
        judge = _backend(args)
    res = judge_texts(
        args.out,
        judge,
        name=args.name,
        protocol=args.protocol,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        seed=args.seed,
        logprobs=not args.no_logprobs,
        rubric_check=args.rubric_check,
        progress=not args.quiet,
    )
    res["n_statements"] = len({t["item"] for t in texts})
    res["texts"] = {"total": len(texts), "generated_now": n_new, "file": f"{args.out}/texts.jsonl"}
    res["all_judges"] = [
        {k: d[k] for k in ("name", "protocol", "n_texts", "spearman", "exact_agreement")}
        for d in report(args.out)
    ]
    req = res["requests"]
    human = (
        f"{res['n_statements']} statements x 5 stances written by {args.generator} ({n_new} "
        f"texts new) -> {args.out}/texts.jsonl\n"
        f"judge {res['judge']['model']} ({args.protocol}) read them: requests {req['total']} "
        f"(cached {req['cached']}, errors {req['errors']}) -> {res['items_file']}\n\n"
        + markdown_table(report(args.out))
        + "\n\nSpearman, exact, within one and MAE compare the judge's 1-5 reading with the "
        "instructed stance (parsed readings only); weighted = sum k*p_k at the reading's "
        "position."
    )
    rc = res["rubric_check"]
    if rc is not None:
        human += (
            f"\nrubric check ({rc['n_pairs']} texts): 1-6 score against the instructed label "
            f"{_f(rc['mean_matched_paired'])} vs the mirrored label {_f(rc['mean_mirrored'])}; "
            f"matched scored higher on {_f(rc['matched_higher'], 3)} (ties {rc['ties']}), "
            f"weighted {_f(rc['matched_higher_weighted'], 3)}"
        )
    emit(args, res, human)


def _add_judge_args(p: argparse.ArgumentParser) -> None:
    """The judge's protocol, sampling, endpoint and local-model options."""
    from palign.judge.client import DEFAULT_TIMEOUT
    from palign.judge.prompts import PROTOCOLS

    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="score-first",
        help="score-first (default): the reply starts with the digit, the weighted score is "
        "read there; reasoning: the paper's prompt (reasoning, then the choice on its own "
        "line, repeated), the weighted score read at the first bare choice (pairwise mode always "
        "asks for reasoning)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="judge temperature (default 0)")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="judgement length limit (default 16 for score-first, 512 for reasoning and pairwise)",
    )
    p.add_argument("--seed", type=int, default=0, help="judge sampling seed (default 0)")
    p.add_argument(
        "--no-logprobs",
        action="store_true",
        help="do not ask for log-probabilities (endpoints that reject them)",
    )
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--retries", type=int, default=4, help="retries per request (default 4)")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per request (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled per retry"
    )
    p.add_argument("--batch-size", type=int, default=8, help="local models: prompts per batch")
    p.add_argument("--device", default="auto", help="local models: auto, cpu, cuda...")
    p.add_argument("--dtype", default="auto", help="local models: auto, float32, bfloat16...")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")


def register(sub: argparse._SubParsersAction) -> None:
    """Add generate-eval, judge, judge-validate and judge-agreement to the parser."""
    p = sub.add_parser(
        "generate-eval",
        help="aligned free-text answers to open questions about the test statements",
        description="For each person and test statement the aligned model answers 'Tell me in "
        "a few sentences how well this describes you: <statement>' (question version q1). "
        "Steering methods steer every position (the paper's o_proj bias) unless "
        "--steer-position last; PAS methods reuse the held-out alphas of a finished evaluation "
        "with --alphas-from instead of searching again; training baselines (dpo, grpo) answer "
        "with their LoRA adapter (--adapters). "
        "Each row also records the method's multiple-choice answer to the statement in the same "
        "aligned state (mc_answer, read as 'palign eval' reads it) for 'palign judge --mode "
        "stance'. "
        "Per-person files are written as they finish; "
        "rerunning the same command resumes. Writes OUT/generations.jsonl and OUT/results.json.",
    )
    p.add_argument(
        "--method",
        required=True,
        help="vanilla, few-shot, personality-prompt, pas, pas+few-shot, dpo, grpo (any "
        "registered method)",
    )
    add_model_args(p)
    add_person_args(p)
    data_args(p)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--adapters",
        default=None,
        metavar="DIR",
        help="dpo/grpo: reuse the LoRA adapters in DIR (e.g. runs/dpo-2/adapters of a 'palign "
        "eval' run with the same training options and --seed; missing persons are trained "
        "into DIR); default: the user cache keyed by the training configuration and model",
    )
    p.add_argument(
        "--max-items",
        type=int,
        default=None,
        help="only this many test statements, spread over the traits (default: all)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=128, help="tokens per answer (default 128)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="sampling temperature (default 0.7; 0 = greedy)",
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1 = off)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="answers generated together")
    p.add_argument(
        "--no-share-prefix",
        dest="share_prefix",
        action="store_false",
        help="recompute the prompt prefix all statements share (the system prompt: ~1,500 "
        "tokens for few-shot) for every batch instead of once per person (same tokens and "
        "positions; equal up to float rounding; only for comparisons)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_pas_args(p)
    add_train_args(p)
    fmt_arg(p)
    p.set_defaults(func=cmd_generate_eval)

    p = sub.add_parser(
        "judge",
        help="rate generations on the paper's 1-6 rubric (or read their 1-5 stance) with any "
        "OpenAI-compatible or local judge",
        description="Rate each generation of DIR (from 'palign generate-eval') on the 1-6 "
        "rubric (--mode stance: read each answer's 1-5 stance and its error against the "
        "person's answer). With --base-url the judge is any OpenAI-compatible endpoint (OpenAI, vLLM, "
        "llama.cpp server, palign's server); the API key is read from $PALIGN_JUDGE_API_KEY, "
        "else $OPENAI_API_KEY. Without --base-url, --judge-model is a palign model (alias, hub "
        "id, folder, .gguf) run in-process. Answers are cached on disk by (judge, prompt), so "
        "judging again sends no request. Writes DIR/judge/<name>.jsonl and .json "
        "(<name>-stance.* in stance mode).",
    )
    p.add_argument("dir", metavar="DIR", help="generation folder")
    p.add_argument(
        "--judge-model",
        required=True,
        help="model name at the endpoint (with --base-url), else a palign model spec",
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or "
        "http://127.0.0.1:8000/v1 (default: run --judge-model locally)",
    )
    p.add_argument(
        "--mode",
        choices=("rubric", "stance"),
        default="rubric",
        help="rubric (default): rate each answer on the paper's 1-6 rubric against the "
        "person's answer; stance: read each answer's 1-5 stance towards its statement (the "
        "judge-validate prompt) and report its error against the person's answer (MAE per "
        "trait, per person the sum of the trait MAEs) and, where the generations record the "
        "method's multiple-choice answer, their agreement; writes DIR/judge/<name>-stance.*",
    )
    p.add_argument(
        "--versus",
        metavar="DIR_B",
        default=None,
        help="pairwise mode: compare DIR's answers with DIR_B's (same persons and items), both "
        "orders; reports DIR's win rate",
    )
    p.add_argument(
        "--name",
        default=None,
        help="output name under DIR/judge/ (default: the judge's name; -stance appended in "
        "stance mode)",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="pairwise: data folder for the persons' profiles (default: the run's)",
    )
    _add_judge_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    fmt_arg(p)
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser(
        "judge-validate",
        help="measure a judge on known answers: texts written at each stance 1..5, read back",
        description="For --items test statements (a sample seeded by --seed) and each of the "
        "five Likert levels, a generator model (--generator: a palign model in-process, or the "
        "model name at --generator-base-url) writes a short first-person text taking that "
        "stance (instruction and text recorded in OUT/texts.jsonl; rerunning resumes). The "
        "judge (--judge-model, with --base-url for an OpenAI-compatible endpoint) reads each "
        "text's stance 1..5 without the instruction; the output is Spearman, exact and "
        "within-one agreement with the instructed level, per judge (every judge run on OUT is "
        "in the table). --seed seeds the statement sample, the texts' sampling and the judge. Writes "
        "OUT/judge/<name>.jsonl and .json.",
    )
    p.add_argument("--out", required=True, help="folder of the known-answer set")
    p.add_argument(
        "--generator",
        required=True,
        help="the model writing the texts: a palign model spec (alias, hub id, folder, .gguf), "
        "or the model name at --generator-base-url",
    )
    p.add_argument(
        "--generator-base-url",
        default=None,
        help="OpenAI-compatible endpoint of the generator (default: run --generator locally)",
    )
    p.add_argument(
        "--judge-model",
        required=True,
        help="model name at the endpoint (with --base-url), else a palign model spec",
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="OpenAI-compatible endpoint of the judge (default: run --judge-model locally)",
    )
    p.add_argument(
        "--items", type=int, default=10, help="test statements, a seeded sample (default 10)"
    )
    p.add_argument(
        "--gen-max-tokens", type=int, default=160, help="text length limit (default 160)"
    )
    p.add_argument(
        "--gen-temperature",
        type=float,
        default=0.7,
        help="generator sampling temperature (default 0.7; 0 = greedy)",
    )
    p.add_argument(
        "--rubric-check",
        action="store_true",
        help="also rate each text on the 1-6 rubric against its instructed label and the "
        "mirrored one (6 - level); the matched target should score higher",
    )
    p.add_argument("--name", default=None, help="output name under OUT/judge/ (default: judge)")
    data_args(p, semantics=False)
    _add_judge_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    fmt_arg(p)
    p.set_defaults(func=cmd_judge_validate)

    p = sub.add_parser(
        "judge-agreement",
        help="agreement of two judges on the same generations (Spearman, exact agreement)",
        description="Compare two items files written by 'palign judge' on the same generation "
        "folder (DIR/judge/<name>.jsonl), e.g. a local judge against a remote one.",
    )
    p.add_argument("judge_1", metavar="JUDGE_1.jsonl")
    p.add_argument("judge_2", metavar="JUDGE_2.jsonl")
    fmt_arg(p)
    p.set_defaults(func=cmd_agreement)
