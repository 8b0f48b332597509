"""``generate-eval``: aligned models answer open questions about the test statements.

For each person and test statement (or ``max_items`` of them spread over the traits) the
aligned model (any registered method) answers :data:`palign.judge.prompts.QUESTION_TEMPLATE`
in free text. Steering methods are applied at every position of every forward (the paper's
o_proj-bias semantics) unless the aligned state says otherwise (``steer_position``);
training baselines (``Aligned.lora``) generate with their LoRA adapter active. In the same
aligned state (no refit) the model also answers each statement as a multiple-choice item,
read as ``palign eval`` reads it (``mc_answer``): ``palign judge --mode stance`` compares it
with the stance of the free text.

A run folder holds ``config.json`` (written first; a different configuration in the same
folder is refused), ``persons/<id>.jsonl`` (one line per item, each person's file written
atomically when the person is finished, so an interrupted run resumes with the persons not yet
written) and ``generations.jsonl`` (every line of the finished persons, in person order) plus
``results.json`` (configuration, versions, timings).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from palign.data.types import Dataset, Person, Semantics
from palign.errors import PalignError
from palign.eval.runs import _check_config, prepare_run, test_items, versions, write_json_atomic
from palign.judge import prompts
from palign.paths import atomic_write

if TYPE_CHECKING:
    import torch

    from palign.methods.base import Aligned, Method
    from palign.models.loading import LoadedModel

GENERATIONS_FORMAT = 2
"""2: every row records the method's multiple-choice answer (``mc_answer``, ``mc_expected``);
1: without them (such folders are still read and judged; rows carry no ``mc_answer``)."""

MC_READOUT = "logits"
"""How ``mc_answer`` is read: ``palign eval``'s default readout (one forward per item)."""


@dataclass
class GenerateConfig:
    """Everything that determines a generation run (stored in ``config.json``).

    Attributes:
        method: registered method name.
        model: model spec (``smollm2``, hub id, folder, ``.gguf``).
        inventory: ``ipip-neo`` or ``sd3``.
        semantics: ``agreement`` or ``paper`` (the person's answers shown to the method and
            the target labels recorded for the judge).
        seed: seed of every random choice (method fits; sampling starts each person from a
            seed derived from it and the person's id, so a resumed run equals an
            uninterrupted one).
        persons: person ids, in order.
        data: data folder given (None = default resolution).
        max_items: only this many test items, spread over the traits (None = all).
        max_new_tokens: generation limit per answer.
        temperature: sampling temperature (0 = greedy).
        top_p: nucleus sampling (1 = off); only with temperature > 0.
        batch_size: answers generated together.
        share_prefix: compute the prompt prefix common to a person's statements once
            (:func:`generate_texts`); like ``batch_size``, not part of the identity (the
            answers agree up to float rounding).
        device / dtype / load_in_4bit: model loading.
        options: method options (PAS ``k``, ``alpha_grid``...).
        question_version: version of the open question (:data:`prompts.QUESTION_VERSION`).
        full, full_sha256: the full-release file the persons were read from and its sha256
            (None = the test-set release), as in :class:`palign.eval.runs.RunConfig`.
    """

    method: str
    model: str = "smollm2"
    inventory: str = "ipip-neo"
    semantics: Semantics = "agreement"
    seed: int = 0
    persons: list[str] = field(default_factory=list)
    data: str | None = None
    max_items: int | None = None
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 16
    share_prefix: bool = True
    device: str = "auto"
    dtype: str = "auto"
    load_in_4bit: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    question_version: str = prompts.QUESTION_VERSION
    full: str | None = None
    full_sha256: str | None = None

    def identity(self) -> dict[str, Any]:
        """Fields that must match for a folder to be resumed."""
        d = asdict(self)
        for k in ("persons", "data", "batch_size", "share_prefix", "device", "full"):
            d.pop(k)
        return d


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    atomic_write(path, write)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file or a one-line :class:`PalignError`."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rows.append(json.loads(line))
    except json.JSONDecodeError:
        raise PalignError(f"{path} is not valid JSONL; rerun the command that wrote it") from None
    return rows


def generate_texts(
    lm: LoadedModel,
    system_prompt: str | None,
    user_texts: list[str],
    *,
    steering: torch.Tensor | None = None,
    position: str = "all",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    share_prefix: bool = True,
) -> list[str]:
    """Answers of one aligned state to several user turns (left-padded batches).

    ``steering`` (``(n_layers, hidden)``) is added to every batch row through
    :func:`palign.steering.steer` at ``position``; torch is seeded once with ``seed`` before
    the first batch. ``share_prefix``: the prompt prefix common to all turns (the system
    prompt: a few-shot prompt is ~1,500 tokens) is computed once and its keys/values reused by
    every batch (:func:`palign.models.prefix_generate.generate_shared_prefix`; the same
    tokens and positions, equal up to float rounding); not with last-position steering,
    whose hook must see each prompt's own last token.
    """
    import torch

    from palign.chat import chat_ids
    from palign.models.prefix_generate import MIN_SHARED_PREFIX, generate_shared_prefix
    from palign.steering import steer

    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    msgs0 = [{"role": "system", "content": system_prompt}] if system_prompt else []
    seqs = [chat_ids(lm, [*msgs0, {"role": "user", "content": t}]) for t in user_texts]
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad}
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    share = share_prefix and (steering is None or position == "all")
    torch.manual_seed(seed)
    with steer(lm.model, steering, position=position):  # type: ignore[arg-type]
        new = generate_shared_prefix(
            lm.model,
            seqs,
            pad,
            batch_size=batch_size,
            min_prefix=MIN_SHARED_PREFIX if share else None,
            **kw,
        )
    return [tok.decode(ids, skip_special_tokens=True).strip() for ids in new]


@contextmanager
def _lora(lm: LoadedModel, folder: str | None) -> Iterator[None]:
    """The person's LoRA adapter active inside the block (no-op without one)."""
    if not folder:
        yield
        return
    from palign.train.lora import active_lora

    with active_lora(lm, folder):
        yield


def person_seed(seed: int, person_id: str) -> int:
    """The sampling seed of one person: derived from the run's seed and the person's id."""
    import hashlib

    return int(hashlib.sha256(f"{seed}:{person_id}".encode()).hexdigest()[:8], 16)


def person_rows(
    cfg: GenerateConfig,
    dataset: Dataset,
    person: Person,
    aligned: Aligned,
    item_ids: list[str],
    texts: list[str],
    mc: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The JSONL rows of one person (target answers and labels under ``cfg.semantics``).

    ``mc``: the aligned state's multiple-choice record
    (:func:`palign.eval.runs.predict_aligned`); its answer to each statement is stored as
    ``mc_answer`` (1..5, None when unparsed) with ``mc_expected``.
    """
    inv = dataset.inventory
    answers = person.answers(inv, cfg.semantics, item_ids)
    rows = []
    for iid, text in zip(item_ids, texts):
        it = inv.item(iid)
        a = answers.get(iid)
        rows.append(
            {
                "person": person.id,
                "item": iid,
                "trait": it.trait,
                "facet": it.facet,
                "statement": inv.statement(it),
                "answer": a,
                "answer_label": prompts.answer_label(a) if a else None,
                "question": prompts.question(inv.statement(it)),
                "text": text,
                "method": cfg.method,
                "steer_position": getattr(aligned, "steer_position", "all")
                if aligned.steering is not None
                else None,
                "lora": bool(getattr(aligned, "lora", None)),
            }
        )
        if mc is not None:
            rows[-1]["mc_answer"] = int(mc["answers"][iid]) or None  # 0 = unparsed
            rows[-1]["mc_expected"] = mc["expected"].get(iid)
    return rows


def mc_record(
    lm: LoadedModel,
    dataset: Dataset,
    method: Method,
    a: Aligned,
    item_ids: list[str],
    batch_size: int,
) -> dict[str, Any]:
    """The multiple-choice answers of the aligned state ``a`` to ``item_ids``.

    The same call ``palign eval`` makes (:func:`palign.eval.runs.predict_aligned`, logits
    readout, the person's steering, adapter and calibration), on the state the generation
    used: nothing is refitted.
    """
    from palign.eval.runs import predict_aligned

    return predict_aligned(
        lm,
        dataset,
        [a],
        item_ids,
        MC_READOUT,
        batch_size,
        kv_store=getattr(method, "kv_store", None),
        share_lower=bool(getattr(method, "share_lower", True)),
    )[0]


def run_generate(
    cfg: GenerateConfig,
    out: str | Path,
    *,
    lm: LoadedModel | None = None,
    dataset: Dataset | None = None,
    method: Method | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a generation run; returns the content of ``results.json``."""
    import numpy as np
    from tqdm.auto import tqdm

    from palign.data import check_inventory, check_semantics, run_dataset
    from palign.methods import MethodConfig, get_method

    check_inventory(cfg.inventory)
    check_semantics(cfg.semantics)
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise PalignError("--max-new-tokens and --batch-size must be at least 1")
    if cfg.temperature < 0 or not 0 < cfg.top_p <= 1:
        raise PalignError("--temperature must be >= 0 and --top-p in (0, 1]")
    method = method or get_method(cfg.method, MethodConfig(cfg.semantics, cfg.seed, cfg.options))
    dataset = dataset or run_dataset(
        cfg.data, cfg.inventory, full=cfg.full, full_sha256=cfg.full_sha256, ids=cfg.persons
    )
    persons = dataset.select(ids=cfg.persons) if cfg.persons else dataset.persons
    cfg.persons = [p.id for p in persons]
    if hasattr(method, "bind_model"):  # PAS: the tuned rule / alphas source, before any check
        method.bind_model(cfg.model, cfg.inventory)
    if hasattr(method, "check_persons"):  # PAS alphas_from: an alpha for every person
        method.check_persons(cfg.persons)
    item_ids = test_items(dataset.inventory, cfg.max_items)
    out = Path(out)
    _check_config(out, cfg, write=False)
    done = {
        p.id: read_jsonl(out / "persons" / f"{p.id}.jsonl")
        for p in persons
        if (out / "persons" / f"{p.id}.jsonl").is_file()
    }
    timing = {
        p.id: json.loads((out / "persons" / f"{p.id}.json").read_text()).get("seconds")
        for p in persons
        if p.id in done and (out / "persons" / f"{p.id}.json").is_file()
    }
    todo = [p for p in persons if p.id not in done]
    t0 = time.perf_counter()
    t_load = t_setup = 0.0
    model_rec: dict[str, Any] = {"spec": cfg.model}
    if todo:
        lm, t_load, t_setup = prepare_run(cfg, out, lm, dataset, method)
        statements = [dataset.inventory.statement(dataset.inventory.item(i)) for i in item_ids]
        questions = [prompts.question(s) for s in statements]
        shared: tuple[Any, list[str], dict[str, Any]] | None = None
        bar = tqdm(
            total=len(persons),
            initial=len(done),
            desc=f"generate {cfg.method}",
            unit="person",
            disable=not progress,
        )
        for p in todo:
            t = time.perf_counter()
            if method.person_independent and shared is not None:
                a, texts, mc = shared
            else:
                a = method.fit_many(lm, dataset, [p])[0]
                with _lora(lm, getattr(a, "lora", None)):  # training baselines (DPO...)
                    texts = generate_texts(
                        lm,
                        a.system_prompt,
                        questions,
                        steering=a.steering,
                        position=getattr(a, "steer_position", "all"),
                        max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.temperature,
                        top_p=cfg.top_p,
                        seed=person_seed(cfg.seed, p.id),
                        batch_size=cfg.batch_size,
                        share_prefix=cfg.share_prefix,
                    )
                # the same aligned state's multiple-choice answers (consistency of the model)
                mc = mc_record(lm, dataset, method, a, item_ids, cfg.batch_size)
                if method.person_independent:
                    shared = (a, texts, mc)
            rows = person_rows(cfg, dataset, p, a, item_ids, texts, mc)
            dt = time.perf_counter() - t
            write_json_atomic(
                out / "persons" / f"{p.id}.json",
                {"person": p.id, "seconds": round(dt, 3), "info": a.info},
            )
            _write_jsonl(out / "persons" / f"{p.id}.jsonl", rows)
            done[p.id] = rows
            timing[p.id] = round(dt, 3)
            bar.update(1)
        bar.close()
        model_rec.update(
            id=lm.model_id,
            revision=lm.revision,
            device=str(lm.device),
            dtype=str(lm.dtype).replace("torch.", ""),
        )
    elif (out / "results.json").is_file():
        try:
            model_rec = json.loads((out / "results.json").read_text()).get("model", model_rec)
        except json.JSONDecodeError:
            pass
    rows = [r for p in persons for r in done[p.id]]
    _write_jsonl(out / "generations.jsonl", rows)
    secs = [v for v in timing.values() if v is not None]
    result = {
        "format": GENERATIONS_FORMAT,
        "config": asdict(cfg),
        "method": method.record(),
        "model": model_rec,
        "prompts": {
            "question_version": cfg.question_version,
            "question": prompts.QUESTION_TEMPLATE,
        },
        "versions": versions(),
        "n_persons": len(persons),
        "n_items": len(item_ids),
        "n_generations": len(rows),
        "mc": {
            "readout": MC_READOUT,
            "n_rows": sum("mc_answer" in r for r in rows),
            "unparsed": sum("mc_answer" in r and r["mc_answer"] is None for r in rows),
        },
        "empty_rate": round(sum(not r["text"] for r in rows) / len(rows), 4) if rows else None,
        "timings": {
            "load_s": round(t_load, 3),
            "setup_s": round(t_setup, 3),
            "run_s": round(time.perf_counter() - t0, 3),
            "seconds_per_person": round(float(np.mean(secs)), 3) if secs else None,
        },
    }
    write_json_atomic(out / "results.json", result)
    return result


def load_generations(folder: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(config record, rows)`` of a generation folder, or a one-line :class:`PalignError`."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    gen = folder / "generations.jsonl"
    if not cfg_path.is_file() or not gen.is_file():
        raise PalignError(
            f"{folder} holds no generations (config.json + generations.jsonl); write them with "
            "'palign generate-eval --out DIR'"
        )
    try:
        cfg = json.loads(cfg_path.read_text())["config"]
    except (json.JSONDecodeError, KeyError):
        raise PalignError(f"{cfg_path} is not a palign generation config") from None
    rows = read_jsonl(gen)
    return cfg, rows
