"""Routes that add, inspect and remove personalities at run time.

``POST /v1/personalities`` registers an uploaded adapter (base64 files) or aligns a new person
from uploaded answers; ``GET /v1/personalities/{name}`` says whether a personality is
``queued``, ``aligning``, ``ready`` or ``failed``; ``DELETE /v1/personalities/{name}``
removes one.

Aligning from answers takes minutes on a CPU. It runs beside generation, not instead of it:
in its own thread, one fit at a time (later ones wait, ``queued``), on a *clone* of the base
model's module tree that shares the weight tensors (no second copy of the weights) but has its
own modules, so the fit's capture hooks and the engine's steering hooks never see each other's
forwards. Only the clone's creation takes the engine's model lock (milliseconds).
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import itertools
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from palign.errors import PalignError
from palign.models.loading import LoadedModel
from palign.serve.lora import LORA_WEIGHTS
from palign.serve.protocol import APIError, PersonalityRequest
from palign.serve.registry import adapter_kind
from palign.steering.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS

__all__ = ["fit_clone", "register_personality_routes"]


def fit_clone(lm: LoadedModel) -> LoadedModel:
    """``lm`` with its own module objects (hooks apart) sharing the weight tensors.

    Call it while no forward runs on ``lm`` (hold the engine's model lock): hooks registered
    at that moment would be copied too.
    """
    shared = {id(t): t for t in itertools.chain(lm.model.parameters(), lm.model.buffers())}
    model = copy.deepcopy(lm.model, shared)
    return dataclasses.replace(lm, model=model, tokenizer=copy.deepcopy(lm.tokenizer))


def _clean(message: str, *paths: Path) -> str:
    """``message`` without server paths (the upload's staging folder and the upload folder)."""
    for p in paths:
        message = message.replace(str(p), "the uploaded adapter")
    return message


def register_personality_routes(app: FastAPI, server: Any) -> None:
    """Add the ``/v1/personalities`` routes for ``server`` (a :class:`PalignServer`)."""
    fit_lock = threading.Lock()  # one fit at a time; later ones wait their turn
    status: dict[str, dict[str, Any]] = {}  # name -> {"status", "since", "error"?}

    def set_status(name: str, state: str, **kw: Any) -> None:
        status[name] = {"status": state, "since": int(time.time()), **kw}

    def fit(body: PersonalityRequest, staging: Path) -> None:
        from palign.serve import align

        with fit_lock:
            set_status(body.name, "aligning")
            server.metrics.alignments.inc()
            try:
                with server.engine.model_lock:  # a moment: no hooks are on the model now
                    lm = fit_clone(server.lm)
                align.align_answers(
                    lm,
                    body.answers or {},
                    staging,
                    inventory=body.inventory,
                    semantics=body.semantics,
                    seed=body.seed,
                    options=body.options,
                    data=server.config.data,
                    person=body.name,
                )
            finally:
                server.metrics.alignments.dec()

    @app.post("/v1/personalities", status_code=201)
    async def add_personality(body: PersonalityRequest) -> Any:
        if (body.files is None) == (body.answers is None):
            raise APIError(
                400, "give exactly one of files (a PAS adapter) or answers", param="files"
            )
        if body.name == server.base:
            raise APIError(
                400,
                f"a personality may not be named like the base model {server.base!r} (its id "
                f"would be {server.base}:{server.base}); choose another name",
                param="name",
            )
        busy = status.get(body.name, {}).get("status") in ("queued", "aligning")
        if busy or (server.registry.get(body.name) is not None and not body.replace):
            raise APIError(
                409,
                f"personality {body.name!r} exists"
                + (" (being aligned)" if busy else "; DELETE it first or send replace: true"),
                param="name",
                code="exists",
            )
        final = server.upload_dir / body.name
        staging = Path(tempfile.mkdtemp(prefix=f".{body.name}.", dir=server.upload_dir))
        try:
            if body.files is not None:
                _write_files(body.files, staging)
                await run_in_threadpool(server.registry.check, staging)
            else:
                set_status(body.name, "queued")
                await run_in_threadpool(fit, body, staging)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            p = server.registry.load(final, body.name, replace=True)
        except PalignError as e:
            msg = _clean(str(e), staging, server.upload_dir)
            if body.answers is not None:
                set_status(body.name, "failed", error=msg)
            else:
                msg = f"the uploaded files are not a usable adapter: {msg}"
            raise APIError(400, msg, param="files" if body.files else "answers") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        status.pop(body.name, None)
        return server.model_card(p)

    @app.get("/v1/personalities/{name}")
    async def personality_status(name: str) -> Any:
        if name.startswith(server.base + ":"):
            name = name[len(server.base) + 1 :]
        p = server.registry.get(name)
        st = status.get(name)
        if st is not None and (p is None or st["status"] in ("queued", "aligning")):
            return {"id": f"{server.base}:{name}", "object": "personality", **st}
        if p is None:
            raise APIError(
                404,
                f"no personality {name!r}; GET /v1/models lists them",
                type="not_found_error",
                param="name",
                code="model_not_found",
            )
        return {"id": f"{server.base}:{name}", "object": "personality", "status": "ready"}

    @app.delete("/v1/personalities/{name}")
    async def delete_personality(name: str) -> Any:
        if name.startswith(server.base + ":"):
            name = name[len(server.base) + 1 :]
        p = server.registry.get(name)
        if p is None or not server.registry.remove(name):
            raise APIError(
                404,
                f"no personality {name!r}; GET /v1/models lists them",
                type="not_found_error",
                param="name",
                code="model_not_found",
            )
        path = p.path
        if path is not None and Path(path).resolve().parent == server.upload_dir:
            shutil.rmtree(path, ignore_errors=True)
        return {"id": f"{server.base}:{name}", "object": "model", "deleted": True}


def _write_files(files: dict[str, str], staging: Path) -> None:
    names = set(files)
    pas_files = {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
    lora_files = {ADAPTER_CONFIG, LORA_WEIGHTS}
    if names != pas_files and names - {"palign_train.json"} != lora_files:
        raise APIError(
            400,
            f"files must be {sorted(pas_files)} (a PAS adapter) or "
            f"{sorted(lora_files)} [+ palign_train.json] (a PEFT LoRA adapter), as "
            f"base64; got {sorted(names)}",
            param="files",
        )
    for fname, b64 in files.items():
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, f"files[{fname!r}] is not valid base64", param="files") from None
        (staging / fname).write_bytes(data)
    kind = adapter_kind(staging)
    if (kind == "peft") != (LORA_WEIGHTS in names):
        raise APIError(
            400,
            "adapter_config.json does not match the weights file (a PAS config "
            "goes with adapter.safetensors, a PEFT config with "
            "adapter_model.safetensors)",
            param="files",
        )
