"""Evaluation runs: any method on any model, many persons per forward pass, resumable.

A run folder holds ``config.json`` (the configuration, written first), ``persons/<id>.json``
(one file per finished person, written atomically as each batch of persons finishes) and
``results.json`` (the full configuration, versions, timings, the per-trait report and the
per-person rows). Rerunning the same command resumes: finished persons are skipped. Rerunning
with a different configuration into the same folder is refused.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from palign import __version__
from palign.data.types import Dataset, Inventory, Person, Semantics
from palign.errors import PalignError
from palign.eval.metrics import Report, evaluate
from palign.paths import atomic_write

if TYPE_CHECKING:
    from palign.methods.base import Aligned, Method
    from palign.models.loading import LoadedModel

READOUTS = ("logits", "generate")
RESULTS_FORMAT = 1


@dataclass
class RunConfig:
    """Everything that determines a run's numbers (stored in every results file).

    Attributes:
        method: registered method name (``palign.methods.METHODS``).
        model: model spec (``smollm2``, a hub id, a folder or a ``.gguf`` file).
        inventory: ``ipip-neo`` or ``sd3``.
        semantics: ``agreement`` or ``paper``.
        readout: ``logits`` (one forward per item) or ``generate`` (15-token greedy + parser).
        seed: seed of every random choice.
        persons: person ids of the run, in order.
        data: data folder given (None = default resolution).
        batch_size: items per forward pass.
        person_batch: persons aligned and evaluated together (their items share forwards).
        device: ``auto``, ``cpu``, ``cuda``...
        dtype: ``auto`` or a torch dtype name.
        options: method options (e.g. PAS ``k``, ``alpha_grid``).
        max_items: evaluate only this many test items, spread over the traits (smoke runs;
            None = all). Recorded, and part of the run's identity.
        load_in_4bit: load the model with 4-bit weights (bitsandbytes, CUDA only).
        full: the full-release file (PAPI-300K / PAPI-120-600K) the persons were read from
            (None = the test-set release of ``data``).
        full_sha256: sha256 of ``full`` (part of the run's identity: a changed file is
            another run).
    """

    method: str
    model: str = "smollm2"
    inventory: str = "ipip-neo"
    semantics: Semantics = "agreement"
    readout: str = "logits"
    seed: int = 0
    persons: list[str] = field(default_factory=list)
    data: str | None = None
    batch_size: int = 32
    person_batch: int = 4
    device: str = "auto"
    dtype: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    max_items: int | None = None
    load_in_4bit: bool = False
    full: str | None = None
    full_sha256: str | None = None

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a run folder to be resumed."""
        d = asdict(self)
        for k in ("persons", "data", "batch_size", "person_batch", "device", "full"):
            d.pop(k)
        return d


def versions() -> dict[str, str]:
    """Versions of palign and the libraries that shape its numbers."""
    out = {"palign": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover
            pass
    return out


def test_items(inventory: Inventory, max_items: int | None = None) -> list[str]:
    """The test item ids, or ``max_items`` of them taken round-robin over the traits."""
    ids = inventory.test_ids
    if max_items is None or max_items >= len(ids):
        return list(ids)
    if max_items < 1:
        raise PalignError("--max-items must be at least 1")
    by_trait = [[i for i in ids if inventory.item(i).trait == t] for t in inventory.traits]
    out: list[str] = []
    k = 0
    while len(out) < max_items:
        for group in by_trait:
            if k < len(group) and len(out) < max_items:
                out.append(group[k])
        k += 1
    return out


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file + rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)

    atomic_write(path, write)


def predict_aligned(
    lm: LoadedModel,
    dataset: Dataset,
    aligned: list[Aligned],
    item_ids: list[str],
    readout: str = "logits",
    batch_size: int = 32,
    progress: bool = False,
    kv_store: Any = None,
    share_zero: bool = True,
    share_lower: bool = True,
) -> list[dict[str, Any]]:
    """Ask every test item for every aligned person in one readout call.

    Persons' items are interleaved into shared batches; steering vectors (if any) are stacked
    into one table so persons with different vectors share each forward pass.
    Returns one prediction record per aligned state: ``answers`` (item -> 1..5, 0 = unparsed),
    ``expected``, ``probs`` and (generate readout) ``texts``. Persons with a LoRA adapter
    (``Aligned.lora``, training baselines) are read one by one with their adapter applied.
    Persons with a calibration (``Aligned.calibration``, the calibrated methods) answer with
    it, applied to the recorded ``probs`` (so it can be recomputed from the record); their
    argmax answers are kept as ``raw_answers``, and ``expected`` and ``probs`` stay raw.
    ``share_zero`` (default): a zero steering vector (PAS at alpha 0) is read unsteered, so
    such persons with equal prompts share reads; off, it is read as a steering row (the
    same values; for measuring the saving). ``share_lower``: see
    :func:`palign.models.readout.option_probs`.
    """
    import dataclasses

    import torch

    if readout != "logits" and any(getattr(a, "calibration", None) for a in aligned):
        raise PalignError("calibrated methods need --readout logits")

    lora = [k for k, a in enumerate(aligned) if getattr(a, "lora", None)]
    if lora:
        from palign.train.lora import active_lora

        recs: list[Any] = [None] * len(aligned)
        rest = [k for k in range(len(aligned)) if k not in lora]
        if rest:
            got = predict_aligned(
                lm,
                dataset,
                [aligned[k] for k in rest],
                item_ids,
                readout,
                batch_size,
                progress,
                kv_store,
            )
            for k, r in zip(rest, got):
                recs[k] = r
        for k in lora:  # no kv_store: cached prefixes belong to the model without the adapter
            with active_lora(lm, aligned[k].lora):
                recs[k] = predict_aligned(
                    lm,
                    dataset,
                    [dataclasses.replace(aligned[k], lora=None)],
                    item_ids,
                    readout,
                    batch_size,
                    progress,
                )[0]
        return recs

    from palign.models.readout import ReadRequest, generate_answers, option_probs

    inv = dataset.inventory
    statements = [inv.statement(inv.item(i)) for i in item_ids]
    rows: list[torch.Tensor] = []
    requests = []
    for a in aligned:
        steer = None
        # a zero steering vector (PAS at alpha 0) changes nothing (x + 0 is exactly x): such a
        # person is read unsteered, so persons with equal prompts share those reads below
        if a.steering is not None and (bool(a.steering.any()) or not share_zero):
            steer = len(rows)
            rows.append(a.steering)
        requests += [ReadRequest(a.system_prompt, s, steer) for s in statements]
    table = torch.stack(rows) if rows else None
    positions = {
        a.steer_position
        for a in aligned
        if a.steering is not None and (bool(a.steering.any()) or not share_zero)
    }
    if len(positions) > 1:
        raise PalignError(
            "persons of one readout call must share a steering position; got "
            + ", ".join(sorted(positions))
        )
    position = positions.pop() if positions else "all"
    # persons without steering and with the same system prompt (vanilla+calibrated, several
    # persons of a prompt-only method with equal prompts) ask identical requests: read each
    # distinct request once and give every person its copy (the readout is deterministic)
    first: dict[ReadRequest, int] = {}
    where = [first.setdefault(r, len(first)) for r in requests]
    if len(first) < len(requests):
        requests = list(first)
    if readout == "logits":
        out = option_probs(
            lm,
            requests,
            batch_size=batch_size,
            steering=table,
            progress=progress,
            kv_store=kv_store,
            position=position,
            share_lower=share_lower,
        )
    elif readout == "generate":
        out = generate_answers(
            lm, requests, batch_size=batch_size, steering=table, position=position
        )
    else:
        raise PalignError(f"unknown readout {readout!r}; use one of: {', '.join(READOUTS)}")
    if len(requests) < len(where):
        idx = np.asarray(where)
        out = dataclasses.replace(
            out,
            probs=out.probs[idx],
            answers=out.answers[idx],
            expected=out.expected[idx],
            texts=[out.texts[i] for i in idx] if out.texts is not None else None,
        )
    n = len(item_ids)
    records = []
    for k in range(len(aligned)):
        sl = slice(k * n, (k + 1) * n)
        rec: dict[str, Any] = {
            "answers": {i: int(v) for i, v in zip(item_ids, out.answers[sl])},
            "expected": {
                i: (None if np.isnan(v) else round(float(v), 5))
                for i, v in zip(item_ids, out.expected[sl])
            },
            "probs": {
                i: (None if np.isnan(p).any() else [round(float(x), 5) for x in p])
                for i, p in zip(item_ids, out.probs[sl])
            },
        }
        if out.texts is not None:
            rec["texts"] = dict(zip(item_ids, out.texts[sl]))
        cal = getattr(aligned[k], "calibration", None)
        if cal is not None:
            from palign.methods.calibrated import Calibration

            stored = np.array([rec["probs"][i] for i in item_ids], dtype=np.float64)
            rec["raw_answers"] = rec["answers"]
            mapped = Calibration.from_dict(cal).apply(stored)
            rec["answers"] = {i: int(v) for i, v in zip(item_ids, mapped)}
        records.append(rec)
    return records


def _check_config(out: Path, cfg: Any, write: bool = True, weights: str | None = None) -> None:
    """Refuse a folder holding another configuration (or, given ``weights``, a run made
    with other weights at the same model path); with ``write``, claim the folder.

    ``cfg`` is a dataclass with ``identity()`` (:class:`RunConfig`, or another run kind's
    configuration such as the open-ended generations'); fields added after a folder was
    written count as their defaults."""
    path = out / "config.json"
    old: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise PalignError(
                f"{path} is not valid JSON; delete the folder or use another --out"
            ) from None
        # fields added after a run was written count as their defaults
        defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING}
        have = {**defaults, **(old.get("identity") or {})}
        if any(have.get(k) != v for k, v in cfg.identity().items()):
            diff = sorted(k for k, v in cfg.identity().items() if have.get(k) != v)
            raise PalignError(
                f"{out} holds a run with a different configuration ({', '.join(diff)}); "
                f"use another --out or delete it"
            )
        had = old.get("weights_fingerprint")
        if weights and had and had != weights:
            raise PalignError(
                f"{out} was written with other weights for model {cfg.model!r} (the files "
                "changed since: retrained or replaced); use another --out or delete it"
            )
    if write:
        rec: dict[str, Any] = {"identity": cfg.identity(), "config": asdict(cfg)}
        if weights or old.get("weights_fingerprint"):
            rec["weights_fingerprint"] = weights or old.get("weights_fingerprint")
        write_json_atomic(path, rec)


def load_person_results(out: Path, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Finished person records of a run folder (ids not finished are absent)."""
    done = {}
    for pid in ids:
        p = out / "persons" / f"{pid}.json"
        if p.is_file():
            try:
                done[pid] = json.loads(p.read_text())
            except json.JSONDecodeError:  # an external truncation: redo that person
                continue
    return done


@dataclass
class RunPlan:
    """A checked run: the method, data, persons, items and what is still to do.

    Attributes:
        method: the method instance (not yet set up).
        dataset: the data set.
        persons: the run's persons, in order (``cfg.persons`` is set to their ids).
        item_ids: the test items asked.
        out: the run folder.
        done: finished person records already in the folder (resume).
        todo: persons still to evaluate, in run order.
    """

    method: Method
    dataset: Dataset
    persons: list[Person]
    item_ids: list[str]
    out: Path
    done: dict[str, dict[str, Any]]
    todo: list[Person]


def plan_run(
    cfg: RunConfig,
    out: str | Path,
    *,
    dataset: Dataset | None = None,
    method: Method | None = None,
) -> RunPlan:
    """Check ``cfg`` and the run folder (no model loaded, nothing written) and list the work."""
    from palign.data import check_inventory, check_semantics, run_dataset
    from palign.methods import MethodConfig, get_method

    check_inventory(cfg.inventory)
    check_semantics(cfg.semantics)
    if cfg.readout not in READOUTS:
        raise PalignError(f"unknown readout {cfg.readout!r}; use one of: {', '.join(READOUTS)}")
    method = method or get_method(cfg.method, MethodConfig(cfg.semantics, cfg.seed, cfg.options))
    if cfg.readout != "logits" and getattr(method, "needs_logits_readout", False):
        raise PalignError("calibrated methods need --readout logits")
    if hasattr(method, "bind_model"):  # PAS: the tuned alpha rule is part of the identity
        method.bind_model(cfg.model, cfg.inventory)
    dataset = dataset or run_dataset(
        cfg.data, cfg.inventory, full=cfg.full, full_sha256=cfg.full_sha256, ids=cfg.persons
    )
    persons: list[Person] = dataset.select(ids=cfg.persons) if cfg.persons else dataset.persons
    cfg.persons = [p.id for p in persons]
    if hasattr(method, "check_persons"):  # PAS alphas_from: an alpha for every person
        method.check_persons(cfg.persons)
    item_ids = test_items(dataset.inventory, cfg.max_items)
    out = Path(out)
    _check_config(out, cfg, write=False)  # refuse a foreign folder before any work
    done = load_person_results(out, cfg.persons)
    todo = [p for p in persons if p.id not in done]
    return RunPlan(method, dataset, persons, item_ids, out, done, todo)


def person_chunks(todo: list[Person], person_batch: int) -> list[list[Person]]:
    """The groups of persons evaluated together (their items share forward passes).

    Per-person numbers can depend on the grouping (padding and batch shapes), so every
    executor (one process or many workers) must use exactly these groups.
    """
    step = max(1, person_batch)
    return [todo[start : start + step] for start in range(0, len(todo), step)]


def eval_chunk(
    cfg: RunConfig,
    lm: LoadedModel,
    dataset: Dataset,
    method: Method,
    chunk: list[Person],
    item_ids: list[str],
    state: dict[str, Any],
) -> list[dict[str, Any]]:
    """Align and evaluate one group of persons; one record per person (without timing).

    ``state`` is kept by the caller across the groups of one run (a person-independent
    method's answers are computed once and stored there).
    """
    if method.person_independent:
        if state.get("shared") is None:
            a = method.fit(lm, dataset, chunk[0])
            shared = predict_aligned(lm, dataset, [a], item_ids, cfg.readout, cfg.batch_size)[0]
            shared["info"] = a.info
            state["shared"] = shared
        return [dict(state["shared"]) for _ in chunk]
    aligned = method.fit_many(lm, dataset, chunk)
    recs = predict_aligned(
        lm,
        dataset,
        aligned,
        item_ids,
        cfg.readout,
        cfg.batch_size,
        kv_store=getattr(method, "kv_store", None),
        share_lower=bool(getattr(method, "share_lower", True)),
    )
    for r, a in zip(recs, aligned):
        r["info"] = a.info
        if a.system_prompt is not None and cfg.method != "vanilla":
            r["system_prompt_chars"] = len(a.system_prompt)
    return recs


def finish_run(
    cfg: RunConfig,
    plan: RunPlan,
    lm: LoadedModel | dict[str, Any] | None,
    timings: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the finished persons and write ``results.json`` (plus ``extra`` keys); return it."""
    report = evaluate(
        plan.dataset.inventory,
        plan.persons,
        {pid: r["answers"] for pid, r in plan.done.items()},
        cfg.semantics,
        name=cfg.method,
        item_ids=plan.item_ids,
    )
    result = build_results(cfg, plan.method, lm, report, plan.done, plan.persons, timings)
    result.update(extra or {})
    write_json_atomic(plan.out / "results.json", result)
    return result


def prepare_run(
    cfg: Any, out: Path, lm: LoadedModel | None, dataset: Dataset, method: Method
) -> tuple[LoadedModel, float, float]:
    """Load the model (unless given), seed torch and numpy with ``cfg.seed``, set the method
    up, then claim the run folder (refused for another configuration or other weights).

    Returns the model and the seconds spent loading it and setting the method up.
    """
    import torch

    t_load = 0.0
    if lm is None:
        from palign.models.loading import load_model

        t = time.perf_counter()
        lm = load_model(
            cfg.model, device=cfg.device, dtype=cfg.dtype, load_in_4bit=cfg.load_in_4bit
        )
        t_load = time.perf_counter() - t
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    t = time.perf_counter()
    method.setup(lm, dataset)
    # the model loaded and the method is ready: claim the folder (same weights only)
    _check_config(out, cfg, weights=getattr(lm, "weights_fingerprint", None))
    return lm, t_load, time.perf_counter() - t


def run_eval(
    cfg: RunConfig,
    out: str | Path,
    *,
    lm: LoadedModel | None = None,
    dataset: Dataset | None = None,
    method: Method | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) an evaluation and write ``results.json``; returns its content."""
    from tqdm.auto import tqdm

    plan = plan_run(cfg, out, dataset=dataset, method=method)
    method, dataset, out, done = plan.method, plan.dataset, plan.out, plan.done
    t_load = 0.0
    t0 = time.perf_counter()
    if plan.todo:
        lm, t_load, t_setup = prepare_run(cfg, out, lm, dataset, method)
        state: dict[str, Any] = {}
        bar = tqdm(
            total=len(plan.persons),
            initial=len(done),
            desc=f"{cfg.method}",
            unit="person",
            disable=not progress,
        )
        for chunk in person_chunks(plan.todo, cfg.person_batch):
            t = time.perf_counter()
            recs = eval_chunk(cfg, lm, dataset, method, chunk, plan.item_ids, state)
            dt = (time.perf_counter() - t) / len(chunk)
            for p, r in zip(chunk, recs):
                r = {"person": p.id, "seconds": round(dt, 3), **r}
                write_json_atomic(out / "persons" / f"{p.id}.json", r)
                done[p.id] = r
            bar.update(len(chunk))
        bar.close()
    else:
        t_setup = 0.0
    timings = {"load_s": t_load, "setup_s": t_setup, "run_s": time.perf_counter() - t0}
    return finish_run(cfg, plan, lm, timings)


def model_record(cfg: RunConfig, lm: LoadedModel | None) -> dict[str, Any]:
    """The ``model`` entry of ``results.json``."""
    rec: dict[str, Any] = {"spec": cfg.model}
    if lm is not None:
        rec.update(
            id=lm.model_id,
            revision=lm.revision,
            model_type=getattr(lm.model.config, "model_type", None),
            device=str(lm.device),
            dtype=str(lm.dtype).replace("torch.", ""),
        )
    return rec


def build_results(
    cfg: RunConfig,
    method: Method,
    lm: LoadedModel | dict[str, Any] | None,
    report: Report,
    done: dict[str, dict[str, Any]],
    persons: list[Person],
    timings: dict[str, float],
) -> dict[str, Any]:
    """The content of ``results.json``."""
    # a dict is a record made where the model was loaded (e.g. a Ray worker)
    model_rec = lm if isinstance(lm, dict) else model_record(cfg, lm)
    secs = [done[p.id].get("seconds", 0.0) for p in persons if p.id in done]
    rows = []
    for ps in report.persons:
        row = ps.to_dict()
        info = done.get(ps.person_id, {}).get("info") or {}
        if info:
            row["info"] = info
        rows.append(row)
    return {
        "format": RESULTS_FORMAT,
        "config": asdict(cfg),
        "method": method.record(),
        "model": model_rec,
        "versions": versions(),
        "timings": {
            **{k: round(v, 3) for k, v in timings.items()},
            "seconds_per_person": round(float(np.mean(secs)), 3) if secs else None,
        },
        "report": report.to_dict(),
        "persons": rows,
    }


def load_results(folder: str | Path) -> dict[str, Any]:
    """Read a run folder's ``results.json`` or raise a one-line :class:`PalignError`."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise PalignError(f"{path} not found; pass a folder written by 'palign eval --out DIR'")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise PalignError(
            f"{path} is not valid JSON; rerun 'palign eval' into that folder"
        ) from None
    if "report" not in d or "config" not in d:
        raise PalignError(f"{path} is not a palign results file")
    return d
