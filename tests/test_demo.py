"""The demo (palign.demo): the person's profile against a hand computation from the release
files, the fixed rule that picks the disagreeing statements, the terminal chart, the PNG, and
the result's five parts (tiny random model; the embedded SmolLM2 through the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from palign.cli import main
from palign.data.types import Dataset
from palign.demo.render import BAR_WIDTH, bar, profile_chart, scale_line, two_columns
from palign.demo.select import RULE, option_label, select_disagreements


# --- part 1: the profile -------------------------------------------------------------------
def _raw_release(papi_dir: Path) -> tuple[dict[str, str], list[str], list[dict]]:
    """Item id -> trait letter (from the item key's 'Key' column), the shown ids, the persons:
    read straight from the release files, without palign's loader."""
    import xlrd

    sheet = xlrd.open_workbook(str(papi_dir / "IPIP-NEO-ItemKey.xls")).sheet_by_index(0)
    head = [str(v).strip() for v in sheet.row_values(0)]
    num, key = head.index("Full#"), head.index("Key")
    trait = {
        str(int(r[num])): str(r[key]).strip()[0]
        for r in (sheet.row_values(i) for i in range(1, sheet.nrows))
        if r[num] not in ("", None)
    }
    split = json.loads((papi_dir / "mpi_300_split.json").read_text())
    shown = [str(int(i)) for i in split["train_index"]]
    rows = json.loads((papi_dir / "Test-set.json").read_text())
    return trait, shown, rows


def test_profile_against_hand_computation(papi_dir: Path, papi: Dataset) -> None:
    """PAPI stores answers in the trait's direction, so a trait score is the plain mean of the
    stored values of the trait's shown items (0 = missing), under either semantics."""
    from palign.demo.profile import person_profile

    trait, shown, rows = _raw_release(papi_dir)

    def hand(row: dict, t: str) -> float:
        vals = [int(row[f"i{i}"]) for i in shown if trait[i] == t and int(row[f"i{i}"] or 0)]
        return sum(vals) / len(vals)

    first = rows[0]
    for sem in ("agreement", "paper"):
        prof = person_profile(papi, papi.persons[0], sem)  # type: ignore[arg-type]
        assert prof["person"] == str(first["case"]) and prof["items"] == 120
        assert prof["label"] == "Big Five" and prof["population"] == "PAPI test set"
        assert prof["population_persons"] == len(rows) == 300
        for t in "OCEAN":
            got = prof["traits"][t]
            assert got["score"] == pytest.approx(hand(first, t), abs=5e-4)
            pop = np.array([hand(r, t) for r in rows])
            assert got["population_mean"] == pytest.approx(pop.mean(), abs=5e-4)
            x = hand(first, t)
            pct = 100 * ((pop < x - 1e-9).sum() + 0.5 * (abs(pop - x) < 1e-9).sum()) / len(pop)
            assert got["percentile"] == pytest.approx(pct, abs=0.05)
    assert papi.persons[0].id == "172481"


def test_data_person_uses_the_same_scores(papi_dir: Path, papi: Dataset, capsys) -> None:
    from palign.data.profile import trait_scores

    assert main(["data", "person", "172481", "--data", str(papi_dir), "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    mine = trait_scores(papi.inventory, papi.person("172481"))
    assert {t: v["shown"] for t, v in d["traits"].items()} == {
        t: round(v, 3) for t, v in mine.items()
    }


def test_percentile_mid_rank() -> None:
    from palign.data.profile import percentile

    v = np.array([1.0, 2.0, 2.0, 3.0, np.nan])
    assert percentile(v, 2.0) == 50.0 and percentile(v, 0.5) == 0.0 and percentile(v, 3.0) == 87.5


# --- part 3: which statements ----------------------------------------------------------------
def test_disagreement_rule_ranks_by_gain_then_item_order() -> None:
    items = ["a", "b", "c", "d", "e", "f", "g", "h"]
    person = {"a": 5, "b": 1, "c": 4, "d": 2, "e": 3, "f": 5, "g": 2, "h": 1}
    vanilla = {"a": 3, "b": 3, "c": 3, "d": 3, "e": 3, "f": 0, "g": 2, "h": 4}
    aligned = {"a": 4, "b": 1, "c": 4, "d": 4, "e": 3, "f": 5, "g": 2, "h": 5}
    # gains: a +1, b +2, c +1, d -1 (away), e/g equal answers, f unparsed vanilla, h -1
    res = select_disagreements(items, person, vanilla, aligned)
    assert res["rule"] == RULE and res["read"] == 8
    assert [d["item"] for d in res["items"]] == ["b", "a", "c"]  # a before c: item order
    assert [d["gain"] for d in res["items"]] == [2, 1, 1]
    assert res["disagreeing"] == 5 and (res["toward"], res["away"], res["same_distance"]) == (
        3,
        2,
        0,
    )
    first = res["items"][0]
    assert (first["person"], first["vanilla"], first["aligned"], first["direction"]) == (
        1,
        3,
        1,
        "toward",
    )
    # all of them, in rule order: the away items after, ties (d, h) by item order
    five = select_disagreements(items, person, vanilla, aligned, n=10)["items"]
    assert [d["item"] for d in five] == ["b", "a", "c", "d", "h"]


def test_disagreement_rule_fewer_than_three_and_honest_directions() -> None:
    items = ["1", "2", "3", "4"]
    person = {"1": 3, "2": 5, "4": 2}  # "3": the person did not answer
    vanilla = {"1": 2, "2": 5, "3": 1, "4": 2}
    aligned = {"1": 4, "2": 4, "3": 5, "4": 2}
    res = select_disagreements(items, person, vanilla, aligned)
    assert [(d["item"], d["direction"]) for d in res["items"]] == [
        ("1", "same distance"),
        ("2", "away"),
    ]
    assert res["disagreeing"] == 2 and res["toward"] == 0 and res["away"] == 1
    none = select_disagreements(items, person, vanilla, vanilla)
    assert none["items"] == [] and none["disagreeing"] == 0


def test_option_labels() -> None:
    assert option_label(5) == "A (Very Accurate)"
    assert option_label(4) == "B (Moderately Accurate)"
    assert option_label(1) == "E (Very Inaccurate)"
    assert option_label(0) == "unparsed"


# --- rendering -------------------------------------------------------------------------------
def test_terminal_bars() -> None:
    assert bar(1.0) == "·" * BAR_WIDTH and bar(5.0) == "█" * BAR_WIDTH
    assert bar(3.0) == "█" * 12 + "·" * 12
    # 3.0625: (2.0625 / 4) * 24 cells = 12 full cells and 3/8 of the next
    assert bar(3.0625) == "█" * 12 + "▍" + "·" * 11
    assert bar(None) == "·" * BAR_WIDTH and bar(9.0) == "█" * BAR_WIDTH
    assert all(len(bar(x)) == BAR_WIDTH for x in np.linspace(0, 6, 49))
    s = scale_line()
    assert [s.index(str(k)) for k in range(1, 6)] == [0, 6, 12, 18, 24]


def _profile() -> dict:
    t = {
        "name": "Extraversion",
        "score": 3.75,
        "population_mean": 3.31,
        "population_q25": 2.9,
        "population_q75": 3.7,
        "percentile": 78.0,
    }
    n = {**t, "name": "Neuroticism", "score": 2.0, "percentile": 10.0}
    return {
        "person": "p",
        "label": "Big Five",
        "population": "PAPI test set",
        "items": 120,
        "population_persons": 300,
        "traits": {"E": t, "N": n},
    }


def test_profile_chart_lines() -> None:
    lines = profile_chart(_profile()).splitlines()
    assert len(lines) == 4  # header, two traits, scale
    assert lines[1].startswith("Extraversion") and "3.75" in lines[1] and "3.31" in lines[1]
    assert lines[1].split()[-1] == "78" and bar(3.75) in lines[1]
    assert lines[2].startswith("Neuroticism ") and bar(2.0) in lines[2]
    col = lines[1].index(bar(3.75))
    assert lines[3][col:].rstrip() == scale_line()  # the scale sits under the bars


def test_two_columns_wrap() -> None:
    left = "word " * 30
    out = two_columns(left, "short", ("vanilla", "PAS"), width=20).splitlines()
    assert out[0].startswith("vanilla") and out[0].endswith("PAS")
    assert all(len(line.split("│")[0]) == 22 for line in out)  # width + 2 spaces
    assert out[2].split("│")[1].strip() == "short" and len(out) == 2 + 8


def test_png_written(tmp_path: Path) -> None:
    from palign.demo.render import write_profile_png

    path = write_profile_png(_profile(), tmp_path / "sub" / "p.png")
    assert path == tmp_path / "sub" / "p.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# --- the whole demo ---------------------------------------------------------------------------
PARTS = ("config", "header", "profile", "numbers", "pas", "answers", "words", "next")


def _check_result(d: dict, person: str, items: int) -> None:
    assert all(k in d for k in PARTS)
    h = d["header"]
    assert h["person"] == person and h["items_read"] == items and h["items_total"] == 180
    assert isinstance(h["seconds"], float) and h["full_command"].startswith("palign demo")
    assert set(d["profile"]["traits"]) == set("OCEAN")
    assert all(isinstance(t["score"], float) for t in d["profile"]["traits"].values())
    assert Path(d["profile"]["png"]).is_file()
    names = [r["name"] for r in d["numbers"]["rows"]]
    assert names[: len(h["methods"])] == h["methods"] and h["methods"][-1] == "pas"
    assert h["methods"][0] == "vanilla" and "ridge" in names
    assert isinstance(d["pas"]["alpha"], float) and d["pas"]["steer_position"] == "all"
    a = d["answers"]
    assert a["read"] == items and len(a["items"]) == min(3, a["disagreeing"])
    for x in a["items"]:
        assert x["vanilla"] != x["aligned"] and x["statement"] and x["trait_name"]
    w = d["words"]
    assert w["question"] == "How do you spend a free evening?" and w["greedy"]
    assert isinstance(w["vanilla"], str) and isinstance(w["aligned"], str)
    cmds = [c["command"] for c in d["next"]]
    assert any(c.startswith(f"palign align --person {person}") for c in cmds)
    assert any(c.startswith("palign chat --adapter") for c in cmds)
    assert any(c.startswith("palign serve --adapters") for c in cmds)


def test_demo_result_tiny_model(papi: Dataset, tiny_lm, tmp_path: Path, monkeypatch) -> None:
    """All five parts from the Python API on a tiny random model; the numbers are those of
    the ordinary run folders; a second call resumes and gives the same result."""
    from palign.demo import DemoConfig, render_text, run_demo
    from palign.eval.runs import load_results

    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    cfg = DemoConfig(
        model="tiny",
        out=str(tmp_path / "demo"),
        max_items=10,
        pas_options={"alpha_selection": "fixed", "alpha": 8.0, "k": 8},
        max_new_tokens=6,
        few_shot=True,
    )
    d = run_demo(cfg, dataset=papi, lm=tiny_lm, progress=False, log=lambda s: None)
    _check_result(d, "172481", 10)
    assert d["header"]["methods"] == ["vanilla", "few-shot", "pas"]
    json.dumps(d)  # JSON-ready
    for row in d["numbers"]["rows"][:3]:
        rep = load_results(row["folder"])["report"]
        assert row["traits"] == rep["traits"] and row["mean"] == rep["mean"]
    text = render_text(d)
    assert "-> PAS is" in text and "mean error" in text
    for title in ("1. The person", "2. The numbers", "3. The answers", "4. The words", "5. What"):
        assert title in text
    # a second call resumes the finished runs; the run's steering vector is kept beside it,
    # and without it the words refit PAS (the same vector: the same words)
    kept = Path(d["header"]["runs"]["pas"]) / "demo_steering.safetensors"
    kept.unlink()
    said: list[str] = []
    again = run_demo(cfg, dataset=papi, lm=tiny_lm, progress=False, log=said.append)
    assert again["words"] == d["words"] and again["answers"] == d["answers"] and kept.is_file()
    assert again["numbers"]["rows"] == d["numbers"]["rows"]
    assert any("refitting PAS" in s for s in said)
    assert d["words"]["aligned"] != d["words"]["vanilla"]  # alpha 8 moves the tiny model


@pytest.mark.slow
def test_demo_cli_smollm2_json(tmp_path: Path, papi_dir: Path, capsys) -> None:
    """``palign demo --format json`` on the embedded model (5 items, fixed alpha: cheap)."""
    argv = [
        "demo",
        "--model",
        "smollm2",
        "--person",
        "156978",
        "--max-items",
        "5",
        "--alpha-selection",
        "fixed",
        "--alpha",
        "4",
        "--max-new-tokens",
        "8",
        "--data",
        str(papi_dir),
        "--out",
        str(tmp_path / "demo"),
        "--format",
        "json",
    ]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    _check_result(d, "156978", 5)
    assert d["header"]["person_rule"] == "chosen with --person"
    assert d["config"]["pas_options"] == {"alpha_selection": "fixed", "alpha": 4.0}
    assert d["words"]["vanilla"] and d["words"]["aligned"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--person", "42"], "unknown person '42'"),
        (["--model", "/nonexistent/m.gguf", "--max-items", "2"], "/nonexistent/m.gguf"),
        (["--max-items", "0", "--model", "smollm2"], "--max-items must be at least 1"),
        (["--k", "0"], "--k must be at least 1"),  # before the model loads
    ],
)
def test_demo_bad_input(papi_dir: Path, tmp_path: Path, capsys, extra, needle) -> None:
    """A one-line error (after the progress lines), exit 2, no traceback, nothing written."""
    rc = main(["demo", *extra, "--data", str(papi_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("palign: error: ") and needle in last, err
    assert err.count("palign: error") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_verdict_line() -> None:
    from palign.demo.render import _verdict

    def rows(v: float, p: float) -> dict:
        ref = {"name": "ridge", "kind": "reference", "mean": 0.1}
        runs = [
            {"name": "vanilla", "kind": "run", "mean": v},
            {"name": "pas", "kind": "run", "mean": p},
        ]
        return {"rows": [*runs, ref]}

    assert (
        _verdict(rows(1.0, 0.5))
        == "-> PAS is closer to the person than vanilla here: mean error 0.500 vs 1.000"
    )
    assert "farther from" in _verdict(rows(0.5, 1.0))  # type: ignore[operator]
    assert "as close to" in _verdict(rows(0.5, 0.5))  # type: ignore[operator]
