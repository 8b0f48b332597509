"""The routes of the web app, added to a ``palign serve`` app by :func:`install_ui`.

- ``GET /`` and ``GET /app/``: the page (``static/index.html``, ``app.js``, ``app.css``);
- ``GET /app/api/info``: the served model, the questionnaire (the inventory's shown
  statements, read from the data), the answer scale, the fit settings, the data folder;
- ``POST /app/api/profile``: trait and facet scores of answers (:mod:`palign.data.profile`,
  the scoring of ``palign data person``) with percentiles among the data set's persons;
- ``POST /app/api/fit``: fit a personality from answers in the background, through the
  server's own ``POST /v1/personalities`` (one fit at a time: 409 while one runs);
- ``GET /app/api/fit/events``: the running fit's progress as server-sent events;
- ``GET /app/api/personalities/{name}/adapter.zip``: a served adapter folder as a zip.

Chat and deletion use the OpenAI-compatible routes (``/v1/chat/completions``,
``DELETE /v1/personalities/{name}``). With an API key every ``/app/api`` route needs it too.
Answers are never logged or written by these routes; they go to ``/v1/personalities``
in memory and the fitted adapter is kept in the server's upload folder.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import os
import shutil
import sys
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from palign.errors import PalignError
from palign.models.loading import LoadedModel
from palign.serve.protocol import APIError
from palign.serve.registry import NAME_RE

__all__ = ["UIConfig", "create_ui_app", "default_data_dir", "install_ui"]

STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
SEMANTICS = "agreement"  # the page's answers are answers to the statements (5 = Very Accurate)
MIN_ANSWERS = 4  # PAS needs contrast (as palign.serve.align)


@dataclass
class UIConfig:
    """Options of the web app.

    Attributes:
        fit_options: PAS options of the page's fits (``k``, ``alpha_grid``, ``folds``...: as
            ``palign align``); ``steer_position`` is ``"all"`` unless given.
        seed: seed of the fits (probe splits and folds).
        inventory: the questionnaire (``"ipip-neo"``: the PAPI release's shown items).
    """

    fit_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    inventory: str = "ipip-neo"

    def options(self) -> dict[str, Any]:
        """The PAS options sent with a fit (steering at all positions by default)."""
        return {"steer_position": "all", **self.fit_options}


def default_data_dir() -> Path:
    """The app's data folder: ``$PALIGN_APP_DIR``, else ``$XDG_DATA_HOME/palign/app``, else
    ``~/.local/share/palign/app``."""
    env = os.environ.get("PALIGN_APP_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "palign" / "app"


class _Answers(BaseModel):
    answers: dict[str, int] = Field(default_factory=dict)


class _FitBody(_Answers):
    name: str = "me"


@dataclass
class _Job:
    """One background fit."""

    name: str
    n_answers: int
    started: float = field(default_factory=time.time)
    status: str = "running"  # running | done | error
    message: str = ""
    card: dict[str, Any] | None = None
    forwards: int = 0
    seconds: float | None = None
    task: asyncio.Task[None] | None = None

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "n_answers": self.n_answers,
            "elapsed": round(
                time.time() - self.started if self.seconds is None else self.seconds, 1
            ),
            "forwards": self.forwards,
            "message": self.message,
            "model": self.card,
        }


class _State:
    """What the routes share: the server, the questionnaire and population, the fit job."""

    def __init__(self, app: FastAPI, ui: UIConfig) -> None:
        self.app = app
        self.server = app.state.palign
        self.ui = ui
        self.job: _Job | None = None
        self._ds: Any = None
        self._pop: dict[str, Any] | None = None

    # --- data ----------------------------------------------------------------------------
    def dataset(self) -> Any:
        if self._ds is None:
            from palign.data import load_dataset

            try:
                self._ds = load_dataset(self.server.config.data, self.ui.inventory)
            except PalignError as e:
                raise APIError(503, f"the questionnaire is unavailable: {e}") from None
        return self._ds

    def population(self) -> dict[str, Any]:
        if self._pop is None:
            from palign.data.profile import population

            ds = self.dataset()
            self._pop = population(ds, SEMANTICS, ds.inventory.shown_ids)
        return self._pop

    def check_answers(self, answers: dict[str, int], need: int = 0) -> dict[str, int]:
        inv = self.dataset().inventory
        shown = set(inv.shown_ids)
        for k, v in answers.items():
            if k not in shown:
                raise APIError(
                    400,
                    f"item {k!r} is not one of the questionnaire's {len(shown)} statements; "
                    "clear this browser's answers and answer again",
                    param="answers",
                )
            if not 1 <= int(v) <= 5:
                raise APIError(400, f"item {k} has answer {v}; answers are 1..5", param="answers")
        if len(answers) < need:
            raise APIError(
                400,
                f"{len(answers)} statements answered; answer at least {need} to fit a "
                "personality (more answers give a better fit)",
                param="answers",
                code="too_few_answers",
            )
        return {k: int(v) for k, v in answers.items()}

    def auth(self, request: Request) -> None:
        key = self.server.config.api_key
        if key:
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {key}".encode()):
                raise APIError(
                    401,
                    "missing or wrong API key; enter the key the server was started with "
                    "(--api-key)",
                    type="authentication_error",
                    code="invalid_api_key",
                )

    # --- the fit -------------------------------------------------------------------------
    async def run_fit(self, job: _Job, answers: dict[str, int], auth: str | None) -> None:
        """POST the answers to this app's own ``/v1/personalities`` (in process)."""
        import httpx

        lm = self.server.lm

        def count(*_: Any) -> None:
            job.forwards += 1

        # every forward (capture, readout, prompt caches) embeds its batch: a liveness count
        hook = lm.model.get_input_embeddings().register_forward_hook(count)
        body = {
            "name": job.name,
            "answers": answers,
            "inventory": self.ui.inventory,
            "semantics": SEMANTICS,
            "seed": self.ui.seed,
            "options": self.ui.options(),
            "replace": True,
        }
        headers = {"authorization": auth} if auth else {}
        try:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
                r = await c.post("/v1/personalities", json=body, headers=headers, timeout=None)
            if r.status_code == 201:
                job.card, job.status = r.json(), "done"
            else:
                try:
                    msg = r.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    msg = r.text[:300]
                job.message, job.status = f"the fit failed: {msg}", "error"
        except Exception as e:  # noqa: BLE001 - reported on the page
            job.message, job.status = f"the fit failed: {type(e).__name__}: {e}", "error"
        finally:
            hook.remove()
            job.seconds = time.time() - job.started


def install_ui(app: FastAPI, ui: UIConfig | None = None) -> FastAPI:
    """Add the web app's routes to ``app`` (made by :func:`palign.serve.app.create_app`)."""
    st = _State(app, ui or UIConfig())
    server = st.server
    static = resources.files("palign.serve.ui") / "static"

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/app/")

    @app.get("/app", include_in_schema=False)
    async def app_noslash() -> RedirectResponse:
        return RedirectResponse("/app/")

    @app.get("/app/", include_in_schema=False)
    async def page() -> Response:
        return _static(static, "index.html")

    @app.get("/app/{fname}", include_in_schema=False)
    async def asset(fname: str) -> Response:
        if fname not in STATIC_FILES:
            raise APIError(404, f"no file {fname!r} in the app", type="not_found_error")
        return _static(static, fname)

    @app.get("/app/api/info")
    async def info(request: Request) -> dict[str, Any]:
        st.auth(request)
        from palign.models.prompts import OPTION_TEXTS

        ds = st.dataset()
        inv = ds.inventory
        facet_names = {i.facet: i.facet_name for i in inv.items}
        return {
            "base": server.base,
            "model_id": server.lm.model_id,
            "inventory": inv.name,
            "semantics": SEMANTICS,
            # OPTION_TEXTS are A..E = 5..1
            "scale": [{"value": 5 - i, "label": t} for i, t in enumerate(OPTION_TEXTS)][::-1],
            "items": [
                {"id": it.id, "text": it.text, "trait": it.trait, "facet": it.facet}
                for it in inv.shown_items
            ],
            "traits": inv.traits,
            "trait_names": inv.trait_names,
            "facet_names": facet_names,
            "population": {"persons": len(ds.persons), "source": ds.source},
            "fit": {"options": st.ui.options(), "seed": st.ui.seed, "min_answers": MIN_ANSWERS},
            "data_folder": str(server.upload_dir),
            "personalities": server.registry.names(),
            "job": st.job.public() if st.job else None,
        }

    @app.post("/app/api/profile")
    async def profile(body: _Answers, request: Request) -> dict[str, Any]:
        st.auth(request)
        from palign.data.profile import facet_codes, percentile, summary, trait_profile

        answers = st.check_answers(body.answers)
        ds = st.dataset()
        inv = ds.inventory
        pop = st.population()
        prof = trait_profile(inv, answers, SEMANTICS, inv.shown_ids)
        items = {"total": {}, "answered": {}}
        for it in inv.shown_items:
            for key in {it.trait, it.facet}:
                items["total"][key] = items["total"].get(key, 0) + 1
                if it.id in answers:
                    items["answered"][key] = items["answered"].get(key, 0) + 1
        facet_names = {i.facet: i.facet_name for i in inv.items}

        def row(key: str, name: str) -> dict[str, Any]:
            score = prof.get(key)
            scores = pop.get(key)
            return {
                "key": key,
                "name": name,
                "score": score,
                "answered": items["answered"].get(key, 0),
                "items": items["total"].get(key, 0),
                "percentile": None
                if score is None or scores is None
                else round(percentile(scores, score), 1),
                "population": summary(scores) if scores is not None else {"n": 0},
            }

        facets = [f for f in facet_codes(inv) if f not in inv.traits]
        return {
            "inventory": inv.name,
            "semantics": SEMANTICS,
            "answered": len(answers),
            "items": len(inv.shown_ids),
            "traits": [row(t, inv.trait_names[t]) for t in inv.traits],
            "facets": [row(f, facet_names[f]) for f in facets],
            "population": {
                "persons": len(ds.persons),
                "source": Path(ds.source).name if ds.source else inv.name,
            },
        }

    @app.post("/app/api/fit", status_code=202)
    async def fit(body: _FitBody, request: Request) -> dict[str, Any]:
        st.auth(request)
        if st.job is not None and st.job.status == "running":
            raise APIError(
                409,
                f"a fit is already running (personality {st.job.name!r}, started "
                f"{time.time() - st.job.started:.0f} s ago); wait for it to finish",
                code="fit_running",
            )
        if not NAME_RE.match(body.name):
            raise APIError(
                400,
                f"personality name {body.name!r} is not allowed; use letters, digits, '.', '_' "
                "or '-' (at most 64, starting with a letter or digit)",
                param="name",
            )
        answers = st.check_answers(body.answers, need=MIN_ANSWERS)
        job = _Job(name=body.name, n_answers=len(answers))
        st.job = job
        job.task = asyncio.create_task(
            st.run_fit(job, answers, request.headers.get("authorization"))
        )
        return job.public()

    @app.get("/app/api/fit/events")
    async def fit_events(request: Request) -> StreamingResponse:
        st.auth(request)

        async def events() -> AsyncIterator[str]:
            job = st.job
            if job is None:
                yield _sse({"status": "idle"})
                return
            while True:
                yield _sse(job.public())
                if job.status != "running" or await request.is_disconnected():
                    return
                await asyncio.sleep(0.5)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    @app.get("/app/api/personalities/{name}/adapter.zip")
    async def adapter_zip(name: str, request: Request) -> Response:
        st.auth(request)
        p = server.registry.get(name)
        if p is None or p.path is None:
            raise APIError(
                404,
                f"no personality {name!r} on this server; fit one first",
                type="not_found_error",
                param="name",
            )
        folder = Path(p.path)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.iterdir()):
                if f.is_file():
                    z.write(f, f"{name}/{f.name}")
        fname = f"{server.base}-{name}-adapter.zip".replace("/", "_")
        return Response(
            buf.getvalue(),
            media_type="application/zip",
            headers={"content-disposition": f'attachment; filename="{fname}"'},
        )

    app.state.palign_ui = st
    return app


def _static(static: Any, fname: str) -> Response:
    data = (static / fname).read_bytes()
    return Response(data, media_type=STATIC_FILES[fname], headers={"cache-control": "no-store"})


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def create_ui_app(
    model: LoadedModel | str = "smollm2",
    data_dir: str | Path | None = None,
    config: Any = None,
    ui: UIConfig | None = None,
    **load_kw: Any,
) -> FastAPI:
    """The OpenAI-compatible server of ``model`` with the web app.

    Args:
        model: a loaded model or a model spec.
        data_dir: the app's data folder (default :func:`default_data_dir`); fitted adapters
            are kept in its ``adapters/`` folder (owner-only permissions) and served again
            at the next start.
        config: :class:`palign.serve.app.ServeConfig` (its ``upload_dir`` is replaced by
            ``data_dir/adapters``).
        ui: :class:`UIConfig`.
        **load_kw: ``device``, ``dtype``, ``load_in_4bit`` of :func:`create_app`.
    """
    from palign.serve.app import ServeConfig, create_app

    folder = Path(data_dir or default_data_dir()).expanduser().resolve() / "adapters"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder.parent, 0o700)
        os.chmod(folder, 0o700)
    except OSError as e:
        raise PalignError(f"cannot use the app data folder {folder.parent}: {e}") from None
    for sub in folder.iterdir():  # staging folders of a fit interrupted by a restart
        if sub.is_dir() and sub.name.startswith("."):
            shutil.rmtree(sub, ignore_errors=True)
    cfg = replace(config or ServeConfig(), upload_dir=folder)
    app = create_app(model, [], cfg, **load_kw)
    server = app.state.palign
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            server.registry.load(sub)
        except PalignError as e:
            print(f"palign: warning: not serving {sub.name}: {e}", file=sys.stderr)
    return install_ui(app, ui)
