"""PAS ``alphas_from``: the held-out alpha of a finished evaluation reused without a search.

The reused fit must be bit-identical to the held-out search's for the person (the same
steering, texts and multiple-choice answers), recorded as such, part of the run's identity,
and refused for every source that is not an honest held-out choice under the same settings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from palign.cli import main
from palign.data.types import Dataset
from palign.errors import PalignError
from palign.eval.runs import RunConfig, run_eval
from palign.judge.generate import GenerateConfig, read_jsonl, run_generate
from palign.methods import MethodConfig, get_method
from palign.models.loading import LoadedModel
from tests.test_runs import small

# a grid without 0: whatever the search chooses, the steering is not the zero vector
OPTS = {"k": 6, "alpha_grid": [2.0, 6.0]}
GEN = {"model": "tiny", "max_new_tokens": 6, "temperature": 0.7}


def papi_table_json(
    path: Path,
    alphas: dict[str, float | None],
    *,
    row: str = "pas@all",
    model: str = "tiny",
    options: dict[str, Any] | None = None,
    seed: int = 0,
    semantics: str = "agreement",
) -> Path:
    """A papi_table-like result (the fields benchmarks/papi_table.py writes) with one row."""
    d = {
        "name": "t",
        "model": model,
        "model_id": "tiny-random-llama",
        "inventory": "ipip-neo",
        "semantics": semantics,
        "seed": seed,
        "options": {"alpha_selection": "heldout", **OPTS, **(options or {})},
        "rows": [
            {
                "kind": "method",
                "name": row,
                "per_person": {p: {"sum": 1.0, "alpha": a} for p, a in alphas.items()},
            },
            {"kind": "reference", "name": "ridge"},
        ],
    }
    path.write_text(json.dumps(d))
    return path


@pytest.fixture
def searched(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, one_thread, monkeypatch
) -> dict[str, Any]:
    """One person's held-out search, once as 'palign eval' and once as generate-eval."""
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    ds = small(papi, 2)
    pid = ds.persons[0].id
    ev = tmp_path / "eval"
    run_eval(
        RunConfig("pas", model="tiny", persons=[pid], options=dict(OPTS)),
        ev,
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    gen = tmp_path / "heldout"
    run_generate(
        GenerateConfig("pas", persons=[pid], options=dict(OPTS), **GEN),
        gen,
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    info = json.loads((gen / "persons" / f"{pid}.json").read_text())["info"]
    ev_info = json.loads((ev / "persons" / f"{pid}.json").read_text())["info"]
    assert info["alpha_selection"] == ev_info["alpha_selection"] == "heldout-kfold"
    assert info["alpha"] == ev_info["alpha"] in OPTS["alpha_grid"]
    return {"ds": ds, "pid": pid, "alpha": info["alpha"], "eval": ev, "heldout": gen}


def test_reused_alpha_is_bit_identical_to_the_search(
    tmp_path: Path, tiny_lm: LoadedModel, searched: dict[str, Any], monkeypatch
) -> None:
    import palign.steering.pas as steering_pas
    from palign.methods.pas import PAS

    ds, pid, alpha = searched["ds"], searched["pid"], searched["alpha"]
    src = papi_table_json(tmp_path / "table.json", {pid: alpha})
    out = tmp_path / "reused"

    def no_search(*a: Any, **k: Any) -> None:
        raise AssertionError("the held-out search ran")

    with monkeypatch.context() as m:  # the reused run searches nothing
        m.setattr(steering_pas, "select_alpha", no_search)
        m.setattr(PAS, "select_alpha_many", no_search)
        res = run_generate(
            GenerateConfig("pas", persons=[pid], options={**OPTS, "alphas_from": str(src)}, **GEN),
            out,
            lm=tiny_lm,
            dataset=ds,
            progress=False,
        )
    # the same texts (sampled with the same seed) and multiple-choice answers
    want = read_jsonl(searched["heldout"] / "generations.jsonl")
    got = read_jsonl(out / "generations.jsonl")
    assert [r["text"] for r in got] == [r["text"] for r in want]
    assert [r["mc_answer"] for r in got] == [r["mc_answer"] for r in want]
    # recorded: the selection, the source (file, entry, sha256) and the alpha
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    info = json.loads((out / "persons" / f"{pid}.json").read_text())["info"]
    assert info["alpha_selection"] == "heldout (reused)" and info["alpha"] == alpha
    assert info["validation_errors"] == {}
    assert info["alphas_from"] == {
        "path": str(src),
        "entry": "pas@all",
        "kind": "papi-table",
        "sha256": sha,
        "alpha": alpha,
    }
    assert res["method"]["alpha_selection"] == "heldout (reused)"
    assert res["method"]["alphas_from"]["sha256"] == sha
    assert res["config"]["options"]["alphas_from"]["sha256"] == sha
    ident = json.loads((out / "config.json").read_text())["identity"]
    assert ident["options"]["alphas_from"] == {
        k: v for k, v in info["alphas_from"].items() if k != "alpha"
    }

    # the steering vectors themselves: the search's fit and the reused fit are equal
    searching = get_method("pas", MethodConfig("agreement", 0, dict(OPTS)))
    reusing = get_method(
        "pas", MethodConfig("agreement", 0, {**OPTS, "alphas_from": f"{src}:pas@all"})
    )
    person = ds.person(pid)
    a = searching.fit(tiny_lm, ds, person)
    b = reusing.fit(tiny_lm, ds, person)
    assert a.info["alpha_selection"] == "heldout-kfold" and a.info["alpha"] == alpha
    assert torch.equal(a.steering, b.steering) and a.steering.abs().sum() > 0
    assert a.info["heads"] == b.info["heads"] and a.system_prompt == b.system_prompt

    # a 'palign eval' run folder is a source too (its results.json)
    out2 = tmp_path / "reused-eval"
    run_generate(
        GenerateConfig(
            "pas", persons=[pid], options={**OPTS, "alphas_from": str(searched["eval"])}, **GEN
        ),
        out2,
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    assert [r["text"] for r in read_jsonl(out2 / "generations.jsonl")] == [r["text"] for r in want]
    info2 = json.loads((out2 / "persons" / f"{pid}.json").read_text())["info"]
    assert info2["alphas_from"]["kind"] == "eval-run" and info2["alpha"] == alpha
    assert info2["alphas_from"]["path"] == str(searched["eval"] / "results.json")

    # 'palign eval' with the reused alpha answers as the searching eval did
    run_eval(
        RunConfig("pas", model="tiny", persons=[pid], options={**OPTS, "alphas_from": str(src)}),
        tmp_path / "eval-reused",
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    rec = json.loads((tmp_path / "eval-reused" / "persons" / f"{pid}.json").read_text())
    ref = json.loads((searched["eval"] / "persons" / f"{pid}.json").read_text())
    assert rec["info"]["alpha_selection"] == "heldout (reused)"
    assert rec["answers"] == ref["answers"] and rec["probs"] == ref["probs"]

    # the source is part of the run's identity: another source never resumes the folder
    (out / "persons" / f"{pid}.jsonl").unlink()
    other = {**OPTS, "alphas_from": str(searched["eval"])}
    with pytest.raises(PalignError, match=r"different configuration \(options\)"):
        run_generate(
            GenerateConfig("pas", persons=[pid], options=other, **GEN),
            out,
            lm=tiny_lm,
            dataset=ds,
            progress=False,
        )
    # the same source resumes it, to the same texts
    run_generate(
        GenerateConfig("pas", persons=[pid], options={**OPTS, "alphas_from": str(src)}, **GEN),
        out,
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    assert read_jsonl(out / "generations.jsonl") == got
    # a recorded source whose file changed since is refused
    src.write_text(src.read_text().replace('"name": "t"', '"name": "u"'))
    with pytest.raises(PalignError, match="changed since"):
        get_method(
            "pas",
            MethodConfig("agreement", 0, {**OPTS, "alphas_from": info["alphas_from"]}),
        )


def _pas(options: dict[str, Any], name: str = "pas", seed: int = 0, sem: str = "agreement"):
    return get_method(name, MethodConfig(sem, seed, {**OPTS, **options}))  # type: ignore[arg-type]


def test_refusals(tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, one_thread) -> None:
    ds = small(papi, 2)
    pid, other = ds.persons[0].id, ds.persons[1].id
    ok = papi_table_json(tmp_path / "ok.json", {pid: 2.0, other: None})

    def refused(match: str, **kw: Any) -> None:
        with pytest.raises(PalignError, match=match):
            _pas(**kw)

    # an ORACLE row, a fixed or tuned row: not the held-out search
    oracle = papi_table_json(tmp_path / "o.json", {pid: 2.0}, row="pas@all:oracle")
    refused("ORACLE row", options={"alphas_from": f"{oracle}:pas@all:oracle"})
    refused(
        "ORACLE row",
        options={
            "alphas_from": str(
                papi_table_json(
                    tmp_path / "o2.json", {pid: 2.0}, options={"alpha_selection": "oracle"}
                )
            )
        },
    )
    tuned = papi_table_json(tmp_path / "t.json", {pid: 2.0}, row="pas@all:tuned")
    refused("alpha selection 'tuned'", options={"alphas_from": f"{tuned}:pas@all:tuned"})
    # settings differ: seed, semantics, K, grid, position, method
    refused(r"seed 0 vs 1", options={"alphas_from": str(ok)}, seed=1)
    refused(r"semantics 'agreement' vs 'paper'", options={"alphas_from": str(ok)}, sem="paper")
    refused(r"k 6 vs 4", options={"alphas_from": str(ok), "k": 4})
    refused(r"alpha_grid", options={"alphas_from": str(ok), "alpha_grid": [1.0, 2.0]})
    last = papi_table_json(tmp_path / "l.json", {pid: 2.0}, row="pas@last")
    refused(r"steer_position 'last' vs 'all'", options={"alphas_from": f"{last}:pas@last"})
    refused(r"no row 'pas@all'", options={"alphas_from": str(last)})  # default entry
    refused(
        r"holds pas alphas, not pas\+few-shot",
        options={"alphas_from": f"{ok}:pas@all"},
        name="pas+few-shot",
    )
    # K missing from the source = the default 24, not this run's 6
    d = json.loads(ok.read_text())
    del d["options"]["k"]
    (tmp_path / "nok.json").write_text(json.dumps(d))
    refused(r"k 24 vs 6", options={"alphas_from": str(tmp_path / "nok.json")})
    # this run asks another selection; a missing file; not a source
    refused(
        "drop --alpha-selection fixed",
        options={"alphas_from": str(ok), "alpha_selection": "fixed", "alpha": 1.0},
    )
    refused("no such file", options={"alphas_from": str(tmp_path / "none.json")})
    (tmp_path / "x.json").write_text("{}")
    refused("neither a papi_table result", options={"alphas_from": str(tmp_path / "x.json")})
    # another model (the run planner binds the model before any work)
    with pytest.raises(PalignError, match="was run with model 'tiny', this run uses 'other'"):
        _pas({"alphas_from": str(ok)}).bind_model("other", "ipip-neo")
    with pytest.raises(PalignError, match="inventory 'ipip-neo'"):
        _pas({"alphas_from": str(ok)}).bind_model("tiny", "sd3")
    # a 'palign eval' run whose persons' alphas were chosen on the test items
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "results.json").write_text(
        json.dumps(
            {
                "config": {
                    "method": "pas",
                    "model": "tiny",
                    "inventory": "ipip-neo",
                    "semantics": "agreement",
                    "seed": 0,
                    "readout": "logits",
                    "options": dict(OPTS),
                },
                "model": {"id": "tiny-random-llama"},
                "persons": [{"person": pid, "info": {"alpha": 2.0, "alpha_selection": "oracle"}}],
            }
        )
    )
    refused("chosen by oracle", options={"alphas_from": str(ev)})
    # a person without an alpha in the source: refused before anything is written
    out = tmp_path / "g"
    with pytest.raises(PalignError, match=f"holds no alpha for person\\(s\\) {other}"):
        run_generate(
            GenerateConfig(
                "pas", persons=[pid, other], options={**OPTS, "alphas_from": str(ok)}, **GEN
            ),
            out,
            lm=tiny_lm,
            dataset=ds,
            progress=False,
        )
    assert not out.exists()
    with pytest.raises(PalignError, match="was run with model 'tiny', this run uses 'other'"):
        run_generate(
            GenerateConfig(
                "pas",
                persons=[pid],
                options={**OPTS, "alphas_from": str(ok)},
                **{**GEN, "model": "other"},
            ),
            out,
            lm=tiny_lm,
            dataset=ds,
            progress=False,
        )
    assert not out.exists()
    with pytest.raises(PalignError, match="holds no alpha"):
        run_eval(
            RunConfig(
                "pas", model="tiny", persons=[other], options={**OPTS, "alphas_from": str(ok)}
            ),
            tmp_path / "e",
            lm=tiny_lm,
            dataset=ds,
            progress=False,
        )
    assert not (tmp_path / "e").exists()


def test_cli_refusals_are_one_line(
    tmp_path: Path, papi_dir: Path, papi: Dataset, tiny_folder: Path, capsys
) -> None:
    pid = papi.persons[0].id
    src = papi_table_json(tmp_path / "s.json", {"someone-else": 2.0}, model=str(tiny_folder))
    out = tmp_path / "g"
    base = [
        "generate-eval",
        "--model",
        str(tiny_folder),
        "--person",
        pid,
        "--max-items",
        "2",
        "--data",
        str(papi_dir),
        "--out",
        str(out),
        "--k",
        "6",
        "--alpha-grid",
        "2,6",
        "--alphas-from",
        str(src),
        "--quiet",
    ]
    for method, want in (
        ("pas", f"holds no alpha for person(s) {pid}"),
        ("vanilla", "--alphas-from is for the PAS methods, not vanilla"),
        ("pas+few-shot", "no row 'pas+few-shot@all'"),
    ):
        assert main([*base, "--method", method]) == 2
        err = capsys.readouterr().err
        assert err.startswith("palign: error: ") and err.count("\n") == 1 and want in err
        assert not out.exists()
    assert main([*base, "--method", "pas", "--seed", "3"]) == 2
    assert "seed 0 vs 3" in capsys.readouterr().err


def test_a_papi_table_result_is_a_source(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, one_thread, monkeypatch
) -> None:
    """benchmarks/papi_table.py's own output: its row's alphas and full method record."""
    from palign.eval.papi_report import build_report

    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    ds = small(papi, 2)
    d = build_report(
        ds,
        "t",
        "tiny",
        1,
        methods=["pas@all"],
        runs_dir=tmp_path / "runs",
        out_dir=tmp_path / "docs",
        options=dict(OPTS),
        progress=False,
        lm=tiny_lm,
    )
    row = next(r for r in d["rows"] if r["name"] == "pas@all")
    pid = d["persons"][0]
    assert row["method_record"]["k"] == 6 and row["method_record"]["alpha_selection"] == "heldout"
    src = tmp_path / "docs" / "t.json"
    # the row's method record holds the settings even where the table's options do not
    table = json.loads(src.read_text())
    table["options"] = {}
    src.write_text(json.dumps(table))
    out = tmp_path / "g"
    run_generate(
        GenerateConfig("pas", persons=[pid], options={**OPTS, "alphas_from": str(src)}, **GEN),
        out,
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    info = json.loads((out / "persons" / f"{pid}.json").read_text())["info"]
    assert info["alpha"] == row["per_person"][pid]["alpha"]
    assert info["alphas_from"]["entry"] == "pas@all"
    assert info["alpha_selection"] == "heldout (reused)"
    with pytest.raises(PalignError, match=r"k 6 vs 4; alpha_grid \[2.0, 6.0\] vs \[0.0, 2.0\]"):
        _pas({"alphas_from": str(src), "k": 4, "alpha_grid": [0.0, 2.0]})
    # without the record, options the table does not state are the defaults (K 24)
    del table["rows"][0]["method_record"]
    src.write_text(json.dumps(table))
    with pytest.raises(PalignError, match=r"k 24 vs 6"):
        _pas({"alphas_from": str(src)})
