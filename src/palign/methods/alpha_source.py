"""Reuse the held-out alphas a finished evaluation chose (PAS option ``alphas_from``).

PAS's held-out alpha search (k folds over the person's shown items) is the costly part of a
fit; the fit itself is deterministic given the shown answers and the settings. A finished
evaluation that ran the same search for the same persons with the same settings records each
person's chosen alpha, so a later run (e.g. ``palign generate-eval``) can fit PAS with that
alpha instead of searching again: the adapter is the same fit with the same alpha.

Two kinds of source are read:

* a ``benchmarks/papi_table.py`` result (``docs/results/<name>.json``), with ``ENTRY`` the
  row (default ``<method>@<position>``, e.g. ``pas@all``): each row's ``per_person`` holds
  the chosen ``alpha``; the settings are the file's ``model``, ``inventory``,
  ``semantics``, ``seed`` and ``options`` plus the row name's position and selection;
* a ``palign eval`` run: its folder or its ``results.json`` (``config`` = the run's
  configuration, ``persons[*].info.alpha`` the chosen alphas).

Refused (one-line :class:`PalignError`): a source without an alpha for a person of the run, a
source whose settings differ from the run's (method, model, inventory, semantics, seed and
every PAS option that shapes the fit or the search), and a source whose alphas were not
chosen by the held-out search (``oracle`` above all, also ``fixed`` and ``tuned``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palign.errors import PalignError

#: the label of a reused alpha in a person's info and the method's record
REUSED = "heldout (reused)"


def _defaults() -> dict[str, Any]:
    """PAS options that shape the fit or the held-out search, with their defaults."""
    from palign.steering.pas import (
        DEFAULT_ALPHAS,
        DEFAULT_FOLDS,
        DEFAULT_HEAD_RANK,
        DEFAULT_K,
        DEFAULT_PROBE_SPLIT,
    )

    return {
        "k": DEFAULT_K,
        "alpha_grid": [float(a) for a in DEFAULT_ALPHAS],
        "folds": DEFAULT_FOLDS,
        "head_rank": DEFAULT_HEAD_RANK,
        "probe_split": DEFAULT_PROBE_SPLIT,
        "fold_heads": "refit",
        "steer_position": "all",
        "selection_readout": "logits",
        "o_proj_path": None,
    }


def _effective(options: dict[str, Any], key: str, default: Any) -> Any:
    v = options.get(key)
    if v is None:
        return default
    if key == "alpha_grid":
        return [float(a) for a in v]
    if key in ("k", "folds"):
        return int(v)
    return v


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``PATH[:ENTRY]`` -> (path, entry or None): the shortest prefix before a ``:`` that
    exists is the path (entries themselves hold ``:``, e.g. ``pas@all:heldout``)."""
    if Path(spec).exists():
        return Path(spec), None
    for i, ch in enumerate(spec):
        if ch == ":" and i and Path(spec[:i]).exists():
            return Path(spec[:i]), spec[i + 1 :] or None
    raise PalignError(
        f"--alphas-from {spec}: no such file or folder; give a papi_table result "
        "(docs/results/<name>.json[:ENTRY]) or a 'palign eval' run folder"
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PalignError(f"--alphas-from {path} is not valid JSON") from None
    if not isinstance(d, dict):
        raise PalignError(f"--alphas-from {path} is neither a papi_table result nor a results.json")
    return d


@dataclass
class AlphaSource:
    """The recorded alphas of one finished evaluation and the settings it ran with.

    Attributes:
        path: the file read (a papi_table JSON or a run's ``results.json``), as given.
        entry: the papi_table row (None for a run's ``results.json``).
        kind: ``papi-table`` or ``eval-run``.
        sha256: hex sha256 of the file's bytes.
        method: the source's method (``pas`` or ``pas+few-shot``).
        settings: ``model``, ``model_id``, ``inventory``, ``semantics``, ``seed``.
        options: the source's PAS options (recorded ones; absent = default).
        alphas: person id -> the chosen alpha (None where the source records none).
        selections: person id -> the person's recorded ``alpha_selection`` (eval runs).
        method_record: whether the settings come from the source's full method record (a
            run's ``results.json``, a papi_table row's ``method_record``) rather than the
            table's options with absent options read as the defaults.
    """

    path: str
    entry: str | None
    kind: str
    sha256: str
    method: str
    settings: dict[str, Any]
    options: dict[str, Any]
    alphas: dict[str, float | None]
    selections: dict[str, Any] = field(default_factory=dict)
    method_record: bool = False

    def record(self) -> dict[str, Any]:
        """What a run records (and resumes on): the file, entry, kind and sha256."""
        return {"path": self.path, "entry": self.entry, "kind": self.kind, "sha256": self.sha256}

    @property
    def where(self) -> str:
        return self.path + (f":{self.entry}" if self.entry else "")

    def check(self, method: str, semantics: str, seed: int, options: dict[str, Any]) -> None:
        """Refuse a source whose method, semantics, seed, PAS options or alpha selection
        differ from this run's (``options``: the run's PAS options)."""
        where = self.where
        if self.method != method:
            raise PalignError(
                f"--alphas-from {where} holds {self.method} alphas, not {method}; pick the "
                f"entry of {method} (e.g. {method}@{options.get('steer_position', 'all')})"
            )
        sel = self.options.get("alpha_selection") or "heldout"
        if sel == "oracle":
            raise PalignError(
                f"--alphas-from {where} is an ORACLE row (alpha chosen on the test items); "
                "only alphas of the held-out search may be reused"
            )
        if sel != "heldout":
            raise PalignError(
                f"--alphas-from {where}: its alphas were chosen by alpha selection {sel!r}, "
                "not the held-out search; only held-out alphas may be reused"
            )
        bad = sorted({v for v in self.selections.values() if v not in (None, "heldout-kfold")})
        if bad:
            raise PalignError(
                f"--alphas-from {where}: persons' alphas were chosen by {', '.join(bad)}, not "
                "the held-out search; only held-out alphas may be reused"
            )
        diff = []
        for k, want in (("semantics", semantics), ("seed", int(seed))):
            if self.settings.get(k) != want:
                diff.append(f"{k} {self.settings.get(k)!r} vs {want!r}")
        for k, default in _defaults().items():
            a, b = _effective(self.options, k, default), _effective(options, k, default)
            if a != b:
                diff.append(f"{k} {a!r} vs {b!r}")
        if diff:
            raise PalignError(
                f"--alphas-from {where} ran with other settings than this run "
                f"({'; '.join(diff)}, source vs this run); rerun the held-out search or match them"
            )

    def check_model(self, model_spec: str, inventory: str, model_id: str | None = None) -> None:
        """Refuse another model or inventory than the source's (``model_id``: the loaded
        model's id, compared where the source records one)."""
        s = self.settings
        if s.get("inventory") != inventory:
            raise PalignError(
                f"--alphas-from {self.where} is for inventory {s.get('inventory')!r}, this run "
                f"for {inventory!r}"
            )
        if s.get("model") != model_spec:
            raise PalignError(
                f"--alphas-from {self.where} was run with model {s.get('model')!r}, this run "
                f"uses {model_spec!r}; pass --model {s.get('model')}"
            )
        if model_id is not None and s.get("model_id") and s["model_id"] != model_id:
            raise PalignError(
                f"--alphas-from {self.where} was run on {s['model_id']}, this run's model "
                f"{model_spec!r} loads {model_id}"
            )

    def check_persons(self, person_ids: list[str]) -> None:
        """Refuse persons the source holds no alpha for (before any work)."""
        missing = [p for p in person_ids if self.alphas.get(p) is None]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise PalignError(
                f"--alphas-from {self.where} holds no alpha for person(s) "
                f"{', '.join(missing[:3])}{more}; run only its persons or search the alpha"
            )

    def alpha(self, person_id: str) -> float:
        """The recorded alpha of ``person_id`` (refused where there is none)."""
        self.check_persons([person_id])
        return float(self.alphas[person_id])  # type: ignore[arg-type]


def _entry_options(entry: str) -> tuple[str, dict[str, Any]]:
    """``method[@position][:selection]`` -> (method, options), as the papi table names rows."""
    spec, _, selection = entry.partition(":")
    method, _, position = spec.partition("@")
    opts: dict[str, Any] = {}
    if position:
        opts["steer_position"] = position
    if selection:
        opts["alpha_selection"] = selection
    return method, opts


def load_alpha_source(spec: str | dict[str, Any], method: str, position: str) -> AlphaSource:
    """Read ``spec`` (``PATH[:ENTRY]``, or a recorded :meth:`AlphaSource.record`, whose
    sha256 must still match); the default entry of a papi_table result is
    ``<method>@<position>``."""
    recorded = spec if isinstance(spec, dict) else None
    if recorded is not None:
        if not recorded.get("path"):
            raise PalignError("alphas_from: a recorded source needs its 'path'")
        path, entry = Path(recorded["path"]), recorded.get("entry")
        if not path.exists():
            raise PalignError(f"--alphas-from {path}: no such file or folder")
    else:
        path, entry = split_spec(str(spec))
    if path.is_dir():
        path = path / "results.json"
        if not path.is_file():
            raise PalignError(
                f"--alphas-from {path.parent} holds no results.json; give a finished 'palign "
                "eval' run folder or a papi_table result"
            )
    d = _load_json(path)
    sha = _sha256(path)
    given = str(path)
    if recorded is not None and recorded.get("sha256") and recorded["sha256"] != sha:
        raise PalignError(
            f"--alphas-from {path} changed since this run recorded it (sha256 differs); use "
            "another --out or restore the file"
        )
    if isinstance(d.get("rows"), list):
        entry = entry or f"{method}@{position}"
        rows = {r.get("name"): r for r in d.get("rows") or [] if r.get("kind") == "method"}
        if entry not in rows:
            raise PalignError(
                f"--alphas-from {path}: no row {entry!r}; rows: {', '.join(map(str, rows))}"
            )
        row = rows[entry]
        src_method, opts = _entry_options(entry)
        rec = row.get("method_record") or {}
        # tables written since the row records its method's full configuration: it wins
        opts.update({k: rec[k] for k in (*_defaults(), "alpha_selection") if k in rec})
        per = row.get("per_person") or {}
        return AlphaSource(
            path=given,
            entry=entry,
            kind="papi-table",
            sha256=sha,
            method=src_method,
            settings={k: d.get(k) for k in ("model", "model_id", "inventory", "semantics", "seed")},
            options={**(d.get("options") or {}), **opts},
            method_record=bool(rec),
            alphas={str(p): (v or {}).get("alpha") for p, v in per.items()},
        )
    if "config" in d and "persons" in d:
        if entry:
            raise PalignError(
                f"--alphas-from {path} is a 'palign eval' result; it has no entries (drop :{entry})"
            )
        cfg = d["config"]
        opts = dict(cfg.get("options") or {})
        if cfg.get("readout") == "generate":
            opts.setdefault("selection_readout", "generate")
        rec = d.get("method") or {}
        opts.update({k: rec[k] for k in (*_defaults(), "alpha_selection") if k in rec})
        persons = d.get("persons") or []
        return AlphaSource(
            path=given,
            entry=None,
            kind="eval-run",
            sha256=sha,
            method=str(cfg.get("method")),
            settings={
                "model": cfg.get("model"),
                "model_id": (d.get("model") or {}).get("id"),
                "inventory": cfg.get("inventory"),
                "semantics": cfg.get("semantics"),
                "seed": cfg.get("seed"),
            },
            options=opts,
            alphas={str(r.get("person")): (r.get("info") or {}).get("alpha") for r in persons},
            selections={
                str(r.get("person")): (r.get("info") or {}).get("alpha_selection") for r in persons
            },
        )
    raise PalignError(
        f"--alphas-from {path} is neither a papi_table result (rows) nor a 'palign eval' "
        "results.json (config, persons)"
    )


def source_from_options(
    options: dict[str, Any], method: str, selection: str, config: Any
) -> AlphaSource | None:
    """The source of ``options["alphas_from"]`` checked against a PAS method's ``options``,
    ``selection`` and ``config`` (semantics, seed), or None without one; the option is
    replaced by the source's :meth:`~AlphaSource.record`."""
    if not options.get("alphas_from"):
        return None
    if selection != "heldout":
        raise PalignError(
            f"--alphas-from reuses held-out alphas; drop --alpha-selection {selection}"
        )
    position = str(options.get("steer_position", "all"))
    source = load_alpha_source(options["alphas_from"], method, position)
    source.check(method, config.semantics, config.seed, options)
    options["alphas_from"] = source.record()
    return source
