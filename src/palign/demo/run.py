"""The demo end to end: align a model to one PAPI person with PAS and show what changed.

:func:`run_demo` evaluates vanilla and PAS (and few-shot on request) through the ordinary
resumable runs of :mod:`palign.eval.runs` (so its numbers equal ``palign eval`` with the same
settings), then builds the five parts the demo shows: the person's profile, the numbers, the
held-out answers where vanilla and PAS disagree, the answers of both to one open question, and
the commands to go on.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from palign.data.types import Dataset, Person, Semantics
from palign.errors import PalignError

DEMO_QUESTION = "How do you spend a free evening?"
"""The open question both models answer in the demo's fourth part."""

PERSON_RULE = "the default: the first person of the data set"
"""How the demo picks its person when none is given."""

ALPHA_HOW = {
    "heldout-kfold": "chosen by k-fold cross-validation on the person's shown answers",
    "fixed": "set with --alpha",
    "tuned": "by the model's rule tuned on development persons (--alpha-selection tuned)",
    "oracle": "ORACLE: chosen on the test items, not an honest evaluation",
}


@dataclass
class DemoConfig:
    """Everything that determines the demo's output.

    Attributes:
        model: model alias, hub id, folder or ``.gguf`` file (default :data:`DEMO_MODEL`).
        person: PAPI person id (None = :data:`PERSON_RULE`).
        data: data folder (None = ``$PALIGN_DATA`` / the cache).
        inventory: ``ipip-neo`` (or ``sd3``).
        semantics: ``agreement`` or ``paper``.
        out: output folder (runs under ``OUT/<model>/``, the profile PNG beside them).
        max_items: read only this many test items (spread over the traits; None = all).
        pas_options: PAS method options (``steer_position``, ``alpha_selection``, ...).
        few_shot: also evaluate the few-shot method.
        seed: seed of every random choice (runs and generation).
        question: the open question of the fourth part.
        max_new_tokens: bound on each generated answer.
        device: ``auto``, ``cpu``, ``cuda``...
        dtype: ``auto`` or a torch dtype name.
    """

    model: str = ""
    person: str | None = None
    data: str | None = None
    inventory: str = "ipip-neo"
    semantics: Semantics = "agreement"
    out: str = "runs/demo"
    max_items: int | None = None
    pas_options: dict[str, Any] = field(default_factory=dict)
    few_shot: bool = False
    seed: int = 0
    question: str = DEMO_QUESTION
    max_new_tokens: int = 60
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if not self.model:
            from palign.demo import DEMO_MODEL

            self.model = DEMO_MODEL


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in s).strip("_") or "model"


def run_folder(cfg: Any, out: Path, person: str) -> Path:
    """``OUT/<model>/<person>-<method>-<hash of the run's identity>``: one folder per
    configuration, so another --max-items or alpha setting starts its own run and an
    identical one resumes."""
    key = hashlib.sha256(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:8]
    return out / _slug(cfg.model) / f"{person}-{_slug(cfg.method)}-{key}"


def _flags(opts: dict[str, Any]) -> list[str]:
    """Command-line flags that reproduce PAS options (as ``palign eval``/``align`` take them)."""
    out = []
    for k, v in opts.items():
        if k in ("selection_readout",):
            continue
        val = ",".join(f"{a:g}" for a in v) if isinstance(v, list) else str(v)
        out += [f"--{k.replace('_', '-')}", val]
    return out


def next_commands(cfg: DemoConfig, person: str, data_flag: list[str]) -> list[dict[str, str]]:
    """What to run next for this person and model (align, chat, serve, the full evaluation)."""
    adapter = f"adapters/{_slug(cfg.model)}-{person}"
    model = ["--model", cfg.model]
    pas = _flags(cfg.pas_options)
    q = shlex.join
    full = ["palign", "demo", *model, "--person", person, *data_flag, *pas]
    return [
        {
            "what": "keep the aligned model (a PAS adapter of a few hundred KB)",
            "command": q(
                ["palign", "align", "--person", person, *model, *data_flag, *pas, "--out", adapter]
            ),
        },
        {"what": "talk to it", "command": q(["palign", "chat", "--adapter", adapter])},
        {
            "what": "serve it (OpenAI-compatible; every adapter under adapters/)",
            "command": q(["palign", "serve", "--adapters", "adapters"]),
        },
        {
            "what": "the full evaluation of PAS on the first 10 persons",
            "command": q(
                [
                    "palign",
                    "eval",
                    "--method",
                    "pas",
                    *model,
                    "--persons",
                    "10",
                    *data_flag,
                    *pas,
                    "--out",
                    f"runs/pas-{_slug(cfg.model)}",
                ]
            ),
        },
    ] + (
        []
        if cfg.max_items is None
        else [
            {"what": "this demo on all test items", "command": q(full)},
        ]
    )


def _save_steering(path: Path, u: Any, system_prompt: str | None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {"u": u.detach().float().cpu().contiguous()},
        str(tmp),
        metadata={"system_prompt": system_prompt or ""},
    )
    tmp.replace(path)


def _load_steering(path: Path) -> tuple[Any, str | None] | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("u"), (f.metadata() or {}).get("system_prompt") or None
    except Exception:  # a damaged file: refit instead
        return None


def _person_answers(folder: Path, person: str) -> dict[str, int]:
    rec = json.loads((folder / "persons" / f"{person}.json").read_text())
    return {str(k): int(v) for k, v in rec["answers"].items()}


def run_demo(
    cfg: DemoConfig,
    *,
    dataset: Dataset | None = None,
    lm: Any = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the demo and return its result (every part, JSON-ready).

    Keys: ``config``, ``header``, ``profile`` (part 1), ``numbers`` (part 2: the
    ``palign compare`` payload of the runs), ``pas`` (alpha and how it was chosen),
    ``answers`` (part 3), ``words`` (part 4), ``next`` (part 5). The profile PNG is written to
    ``OUT/<model>/<person>-profile.png`` (``profile["png"]``; None without matplotlib).
    """
    from palign.chat import AlignedModel
    from palign.data import check_inventory, check_semantics, load_dataset
    from palign.demo.profile import person_profile
    from palign.demo.render import write_profile_png
    from palign.demo.select import select_disagreements
    from palign.eval.compare import compare_runs
    from palign.eval.runs import RunConfig, plan_run, run_eval, test_items
    from palign.methods import MethodConfig, get_method
    from palign.models.loading import load_model

    say = log or (lambda s: print(s, file=sys.stderr))
    t0 = time.perf_counter()
    check_inventory(cfg.inventory)
    sem = check_semantics(cfg.semantics)
    if cfg.max_new_tokens < 1:
        raise PalignError("--max-new-tokens must be at least 1")
    ds = dataset or load_dataset(cfg.data, cfg.inventory)
    inv = ds.inventory
    person: Person = ds.person(cfg.person) if cfg.person else ds.persons[0]
    items = test_items(inv, cfg.max_items)
    out = Path(cfg.out)
    base = out / _slug(cfg.model)

    say(
        f"palign demo: aligning {cfg.model} to person {person.id} with PAS, "
        f"{len(items)} of {len(inv.test_ids)} test items"
    )
    profile = person_profile(ds, person, sem)

    # every run configured and its folder checked before the model loads (bad options fail fast)
    methods = ["vanilla", *(["few-shot"] if cfg.few_shot else []), "pas"]
    pas_opts = dict(cfg.pas_options)
    captured: dict[str, Any] = {}
    plans = []
    for name in methods:
        opts = pas_opts if name == "pas" else {}
        rc = RunConfig(
            method=name,
            model=cfg.model,
            inventory=cfg.inventory,
            semantics=sem,
            seed=cfg.seed,
            persons=[person.id],
            data=cfg.data,
            device=cfg.device,
            dtype=cfg.dtype,
            options=opts,
            max_items=cfg.max_items,
        )
        method = get_method(name, MethodConfig(sem, cfg.seed, opts))
        if name == "pas":
            pas_method = method
            fit_many = method.fit_many

            def capture(lm_: Any, ds_: Dataset, persons: list[Person], _f: Any = fit_many) -> Any:
                res = _f(lm_, ds_, persons)
                captured.update({a.person_id: a for a in res})
                return res

            method.fit_many = capture  # type: ignore[method-assign]
        folder = run_folder(rc, out, person.id)
        plan_run(rc, folder, dataset=ds, method=method)  # refuses a foreign folder now
        plans.append((name, rc, method, folder))

    if lm is None:
        say(f"palign demo: loading {cfg.model}")
        lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    folders: dict[str, Path] = {}
    for name, rc, method, folder in plans:
        say(f"palign demo: {name} on {len(items)} test items -> {folder}")
        run_eval(rc, folder, lm=lm, dataset=ds, method=method, progress=progress)
        folders[name] = folder
    numbers = compare_runs([str(folders[m]) for m in methods], dataset=ds)

    # the PAS vector of the run (kept beside it so a resumed demo needs no refit)
    pas_folder = folders["pas"]
    spath = pas_folder / "demo_steering.safetensors"
    info = json.loads((pas_folder / "persons" / f"{person.id}.json").read_text()).get("info", {})
    if person.id in captured:
        a = captured[person.id]
        u, sys_prompt = a.steering, a.system_prompt
        _save_steering(spath, u, sys_prompt)
    else:
        kept = _load_steering(spath)
        if kept is None:
            say("palign demo: refitting PAS for the words (no kept steering vector)")
            pas_method.setup(lm, ds)
            a = pas_method.fit(lm, ds, person)
            u, sys_prompt = a.steering, a.system_prompt
            _save_steering(spath, u, sys_prompt)
        else:
            u, sys_prompt = kept
    position = str(info.get("steer_position", pas_opts.get("steer_position", "all")))

    # part 3: held-out statements where the two disagree
    answers = select_disagreements(
        items,
        person.answers(inv, sem, ids=items),
        _person_answers(folders["vanilla"], person.id),
        _person_answers(pas_folder, person.id),
    )
    for d in answers["items"]:
        it = inv.item(d["item"])
        d["text"] = it.text
        d["statement"] = inv.statement(it)
        d["trait"] = it.trait
        d["trait_name"] = inv.trait_names[it.trait]

    # part 4: one open question, greedy, both with the same system prompt
    say("palign demo: vanilla and PAS answer the open question")
    kw = {"max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
    plain = AlignedModel(lm, system_prompt=sys_prompt, position=position)
    steered = AlignedModel(lm, system_prompt=sys_prompt, position=position, steering=u)
    words = {
        "question": cfg.question,
        "system_prompt": sys_prompt,
        "vanilla": plain.generate(cfg.question, **kw),
        "aligned": steered.generate(cfg.question, **kw),
        "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
        "greedy": True,
        "steer_position": position,
    }

    # written last: a demo that fails (unknown model, ...) leaves no file behind
    png = write_profile_png(profile, base / f"{person.id}-profile.png")
    profile["png"] = str(png) if png else None

    data_flag = ["--data", cfg.data] if cfg.data else []
    full = None
    if cfg.max_items is not None and len(items) < len(inv.test_ids):
        full = shlex.join(
            [
                "palign",
                "demo",
                "--model",
                cfg.model,
                "--person",
                person.id,
                *data_flag,
                *_flags(cfg.pas_options),
            ]
        )
    sel = str(info.get("alpha_selection"))
    header = {
        "model": cfg.model,
        "model_id": getattr(lm, "model_id", None),
        "person": person.id,
        "person_rule": "chosen with --person" if cfg.person else PERSON_RULE,
        "items_read": len(items),
        "items_total": len(inv.test_ids),
        "methods": methods,
        "runs": {m: str(f) for m, f in folders.items()},
        "seconds": round(time.perf_counter() - t0, 1),
        "full_command": full,
    }
    return {
        "config": asdict(cfg),
        "header": header,
        "profile": profile,
        "numbers": numbers,
        "pas": {
            "alpha": info.get("alpha"),
            "alpha_selection": info.get("alpha_selection"),
            "alpha_how": ALPHA_HOW.get(sel, sel),
            "validation_errors": info.get("validation_errors"),
            "steer_position": position,
        },
        "answers": answers,
        "words": words,
        "next": next_commands(cfg, person.id, data_flag),
    }
