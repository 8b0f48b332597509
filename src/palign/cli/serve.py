"""CLI of serving: ``palign serve`` (OpenAI-compatible server) and ``palign export``."""

from __future__ import annotations

import argparse
import sys

from palign.cli.common import add_model_args, check_listen, emit, fmt_arg, serve_extra_missing
from palign.errors import PalignError


def cmd_serve(args: argparse.Namespace) -> None:
    """Start the server (blocks until Ctrl-C)."""
    try:
        import uvicorn

        from palign.serve.app import ServeConfig, create_app
    except ImportError as e:
        raise serve_extra_missing("serve", e) from None
    if args.max_batch < 1 or args.max_queue < 0 or args.max_body_mb <= 0:
        raise PalignError("--max-batch must be >= 1, --max-queue >= 0, --max-body-mb > 0")
    check_listen(args, "use the model")
    config = ServeConfig(
        served_model_name=args.served_model_name,
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        upload_dir=args.upload_dir,
        data=args.data,
        force=args.force,
        threads=args.threads,
    )
    app = create_app(args.model, args.adapters or [], config, device=args.device, dtype=args.dtype)
    srv = app.state.palign
    names = [srv.base] + [f"{srv.base}:{n}" for n in srv.registry.names()]
    print(
        f"palign serve: {srv.lm.model_id} as {srv.base!r} with {len(names) - 1} personalities "
        f"on http://{args.host}:{args.port}/v1\nmodels: {', '.join(names)}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def cmd_export(args: argparse.Namespace) -> None:
    """Bake one person into a standard model folder or a GGUF file."""
    to = args.to or ("gguf" if str(args.out).lower().endswith(".gguf") else "folder")
    if to == "gguf":
        _export_gguf(args)
        return
    from palign.serve.export import export_adapter

    rec = export_adapter(
        args.adapter,
        args.out,
        model=args.model,
        alpha=args.alpha,
        device=args.device,
        dtype=args.dtype,
        force=args.force,
        verify=not args.no_verify,
        steer_position=args.steer_position,
    )
    v = rec.get("verification")
    check = (
        f"checked: max |logit diff| {v['max_abs_logit_diff']:.2g} vs the steered model on "
        f"{len(v['prompts'])} prompts"
        if v
        else "not checked (--no-verify)"
    )
    human = (
        f"exported person {rec['person']} (alpha {rec['alpha']:g}) of {rec['base_model']['id']} "
        f"-> {rec['out']} ({rec['exported_model_type']}, o_proj bias, {rec['dtype']})\n{check}\n"
        f"serve it with any HF-folder server, e.g.: vllm serve {rec['out']}"
    )
    emit(args, rec, human)


def _export_gguf(args: argparse.Namespace) -> None:
    from palign.serve.export_gguf import export_gguf

    if args.dtype != "auto":
        raise PalignError(
            f"--dtype {args.dtype} does not apply to --to gguf: the base GGUF's tensors are "
            "copied as they are (its quantisation kept); leave --dtype out"
        )
    rec = export_gguf(
        args.adapter,
        args.out,
        model=args.model,
        alpha=args.alpha,
        device=args.device,
        force=args.force,
        steer_position=args.steer_position,
    )
    v = rec["verification"]
    human = (
        f"exported person {rec['person']} (alpha {rec['alpha']:g}) of {rec['base_model']['id']} "
        f"-> {rec['out']} ({rec['architecture']} GGUF, {rec['bias_tensors']} F32 "
        f"attn_output biases, {rec['bytes'] / 1e6:.0f} MB)\nchecked: base tensors byte-identical, "
        f"biases equal the shift (max |diff| {v['bias_max_abs_diff']:g})\n"
        f"run it with llama.cpp: llama-server -m {rec['out']}\n"
        f"or Ollama, with this Modelfile beside it:\n{rec['ollama_modelfile'].rstrip()}"
    )
    emit(args, rec, human)


def register(sub: argparse._SubParsersAction) -> None:
    """Add serve / export to the parser."""
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible server: one base model, many personalities",
        description="Serve the base model and PAS personalities over an OpenAI-compatible API "
        "(/v1/models, /v1/chat/completions, /v1/completions, /v1/personalities) with vLLM's "
        "sampling extras and its /tokenize, /detokenize, /version and /metrics routes. A "
        "personality is the model '<base>:<name>'. See docs/serving.md.",
    )
    add_model_args(p)
    p.add_argument(
        "--adapters",
        action="append",
        metavar="DIR",
        help="a PAS or PEFT LoRA adapter folder, or a folder of adapter folders (each served "
        "under its folder name); repeatable",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument(
        "--served-model-name", default=None, help="name of the base model (default: --model)"
    )
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together")
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="waiting sequences before 503 (default 256); requests with more sequences than "
        "--max-batch + --max-queue get 400",
    )
    p.add_argument("--max-body-mb", type=float, default=16.0, help="request size limit (413)")
    p.add_argument(
        "--upload-dir",
        default=None,
        help="keep adapters uploaded or aligned at run time here (default: a temporary folder)",
    )
    p.add_argument("--data", default=None, help="PAPI data folder, for aligning uploaded answers")
    p.add_argument(
        "--force",
        action="store_true",
        help="accept adapters recorded for another id/revision of the same model shape",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "export",
        help="one person as a standard Hugging Face model folder (for vLLM, TGI...) or a GGUF "
        "file (llama.cpp, Ollama, LM Studio)",
        description="Bake a PAS adapter into its base model as an o_proj bias (exact for "
        "steering at all positions) and write a plain model folder (checked against the "
        "steered model), or, with --to gguf, a copy of the base model's GGUF with "
        "blk.N.attn_output.bias tensors (Llama-architecture GGUFs only; see docs/serving.md).",
    )
    p.add_argument("--adapter", required=True, help="adapter folder written by 'palign align'")
    p.add_argument("--out", required=True, help="model folder (or .gguf file) to write")
    p.add_argument(
        "--to",
        default=None,
        choices=("folder", "gguf"),
        help="folder: a Hugging Face model folder; gguf: the base GGUF (alias or .gguf model) "
        "plus attn_output biases, its quantisation kept (default: gguf when --out ends in "
        ".gguf, else folder)",
    )
    p.add_argument("--model", default=None, help="base model (default: the one recorded)")
    p.add_argument("--alpha", type=float, default=None, help="strength (default: fitted alpha)")
    p.add_argument("--device", default="cpu", help="where to load the base model (default cpu)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "bfloat16", "float16", "float32"),
        help="weights dtype of a folder export (default auto: the base model's own; bfloat16 "
        "for a quantised GGUF)",
    )
    p.add_argument(
        "--steer-position",
        default=None,
        choices=("all",),
        help="export an adapter fitted at the last position anyway, steering all positions "
        "(an o_proj bias cannot steer the last one only); recorded in the export",
    )
    p.add_argument("--force", action="store_true", help="accept another base id/revision")
    p.add_argument(
        "--no-verify", action="store_true", help="skip the logit comparison (folder export)"
    )
    fmt_arg(p)
    p.set_defaults(func=cmd_export)
