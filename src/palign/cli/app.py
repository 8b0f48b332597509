"""CLI of the web app: ``palign app`` (questionnaire, profile, align, talk in a browser)."""

from __future__ import annotations

import argparse
import sys

from palign.cli.common import (
    add_model_args,
    add_pas_args,
    check_listen,
    pas_options,
    serve_extra_missing,
)


def cmd_app(args: argparse.Namespace) -> None:
    """Start the server with the web app (blocks until Ctrl-C)."""
    try:
        import uvicorn

        from palign.serve.app import ServeConfig
        from palign.serve.ui import UIConfig, create_ui_app, default_data_dir
    except ImportError as e:
        raise serve_extra_missing("app", e) from None
    check_listen(args, "use the model and read the personalities fitted here")
    from palign.data import resolve_data_dir

    resolve_data_dir(args.data, "ipip-neo")  # the questionnaire's items: fail early, one line
    opts = pas_options(args)
    config = ServeConfig(
        served_model_name=args.served_model_name,
        api_key=args.api_key,
        data=args.data,
        force=args.force,
        threads=args.threads,
    )
    data_dir = args.data_dir or default_data_dir()
    app = create_ui_app(
        args.model,
        data_dir,
        config,
        UIConfig(fit_options=opts, seed=args.seed),
        device=args.device,
        dtype=args.dtype,
        load_in_4bit=args.load_in_4bit,
    )
    srv = app.state.palign
    print(
        f"palign app: {srv.lm.model_id} as {srv.base!r}; open http://{args.host}:{args.port}/ "
        f"in a browser (API: http://{args.host}:{args.port}/v1)\n"
        f"fitted personalities are kept in {srv.upload_dir}",
        file=sys.stderr,
        flush=True,
    )
    # access log off: request lines are not needed and a person's activity is nobody's log
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``app`` to the parser."""
    p = sub.add_parser(
        "app",
        help="web app: take the questionnaire, see your profile, align a model to you and "
        "talk to it next to the vanilla one",
        description="Serve a single-page web app (and the OpenAI-compatible API of "
        "'palign serve') from one process: the IPIP-NEO questionnaire of the PAPI release, "
        "your Big Five profile next to the release's population, a one-button PAS fit, and "
        "a side-by-side chat. Answers stay in the browser; fitted adapters are kept in "
        "--data-dir. See docs/app.md.",
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key", default=None, help="require this key (the page asks for it; the API "
        "needs 'Authorization: Bearer KEY')"
    )  # fmt: skip
    p.add_argument(
        "--data", default=None, help="PAPI data folder (default: $PALIGN_DATA or the cache)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="where fitted personalities are kept (default: $PALIGN_APP_DIR, else "
        "$XDG_DATA_HOME/palign/app, else ~/.local/share/palign/app)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fits (probe splits, folds)")
    p.add_argument(
        "--served-model-name", default=None, help="name of the base model (default: --model)"
    )
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
    add_pas_args(p)
    p.set_defaults(func=cmd_app)
