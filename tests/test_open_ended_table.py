"""``benchmarks/open_ended_table.py``: its pure aggregation on synthetic judge outputs, against
figures computed by hand, and the page written from finished folders (``--report-only``)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from open_ended_page import family  # noqa: E402
from open_ended_table import (  # noqa: E402
    _fresh,
    constant_reference,
    first_person_share,
    item_histogram,
    main,
    method_row,
    person_means,
    rubric_summary,
    validation_summary,
    wins_ties_losses,
)
from palign.judge.generate import read_jsonl  # noqa: E402

T1 = 12.706204736174696  # Student-t 97.5% quantile, 1 degree of freedom


def _it(person: str, score: int | None, weighted: float | None = None, error: str | None = None):
    return {"person": person, "item": "x", "score": score, "weighted": weighted, "error": error}


ITEMS = [
    _it("a", 4, 4.2),
    _it("a", 2, 2.6),
    _it("a", None),  # unparsed
    _it("b", 6, 5.5),
    _it("b", 5, 5.1),
    _it("c", None, error="timeout"),  # failed request: c has no score
]


def test_rubric_summary_wins_and_histogram_by_hand() -> None:
    assert person_means(ITEMS) == {"a": 3.0, "b": 5.5}
    assert person_means(ITEMS, "weighted") == pytest.approx({"a": 3.4, "b": 5.3})
    r = rubric_summary(ITEMS)
    assert (r["n_items"], r["unparsed"], r["errors"]) == (6, 1, 1)
    # mean of the person means 3.0 and 5.5; t-interval with 1 degree of freedom, clipped
    half = T1 * (2.5 / math.sqrt(2)) / math.sqrt(2)
    assert r["score"]["mean"] == pytest.approx(4.25) and r["score"]["n"] == 2
    assert (r["score"]["lo"], r["score"]["hi"]) == pytest.approx(
        (max(1.0, 4.25 - half), min(6.0, 4.25 + half))
    )
    assert r["weighted"]["mean"] == pytest.approx(4.35)
    assert item_histogram(ITEMS) == [0, 1, 0, 1, 1, 1]
    base = {"a": 3.0, "b": 6.0, "c": 2.0}
    assert wins_ties_losses({"a": 3.0, "b": 5.5, "d": 1.0}, base) == {
        "wins": 0,
        "ties": 1,
        "losses": 1,
        "n": 2,
    }
    assert wins_ties_losses({"a": 3.5, "c": 2.0}, base)["wins"] == 1
    assert family("qwen2.5-coder-1.5b") == family("Qwen/Qwen2.5-Coder-1.5B-Instruct") == "qwen"
    assert family("HuggingFaceTB/SmolLM2-135M-Instruct") == family("smollm2") == "smollm"
    assert family("gpt-4o") != family("qwen2.5-coder-1.5b")


STANCE = {
    "error": {
        "person_sum": {"n": 2, "mean": 4.0, "lo": 1.0, "hi": 7.0},
        "overall": {"n": 8, "mean": 0.8, "lo": 0.5, "hi": 1.1},
        "n_persons_complete": 2,
        "persons": [{"person": "a", "sum": 3.0}, {"person": "b", "sum": 5.0}],
    },
    "error_weighted": {"person_sum": {"n": 2, "mean": 3.5, "lo": 2.0, "hi": 5.0}},
    "unparsed_rate": 0.1,
    "mc_error": {"person_sum": {"n": 2, "mean": 2.5, "lo": None, "hi": None}},
    "consistency": {"mae": 1.25, "exact_agreement": 0.5, "spearman": 0.3},
}


def test_method_row_and_validation() -> None:
    row = method_row("pas", ITEMS, STANCE, {"a": 2.0, "b": 5.5})
    assert row["vs_base"] == {"wins": 1, "ties": 1, "losses": 0, "n": 2}
    assert row["stance"]["error"]["mean"] == 4.0 and row["stance"]["person_sums"] == {
        "a": 3.0,
        "b": 5.0,
    }
    assert row["stance"]["mc_error"]["mean"] == 2.5 and row["stance"]["consistency"]["mae"] == 1.25
    assert method_row("vanilla", ITEMS, STANCE, None)["vs_base"] is None
    v = validation_summary(
        {
            "mode": "stance",
            "protocol": "score-first",
            "judge": {"model": "m", "resolved_models": ["m-1"], "base_url": None},
            "known_answers": {"generator": "g", "items": 10},
            "n_texts": 50,
            "unparsed_rate": 0.0,
            "spearman": 0.3,
            "exact_agreement": 0.2,
            "within_one": 0.6,
            "mae": 1.4,
            "spearman_weighted": 0.35,
            "mae_weighted": 1.2,
        }
    )
    assert v["judge"] == "m-1" and v["served"] == "in-process" and v["spearman"] == 0.3
    from palign.errors import PalignError

    with pytest.raises(PalignError, match="judge-validate"):
        validation_summary({"mode": "score"})


def _write_items(f: Path, method: str) -> None:
    """Per-item stance readings (all "4") and generations of two persons x two items."""
    rows = (("a", "1", 5), ("a", "2", 3), ("b", "1", 4), ("b", "2", 4))
    st = [{"person": p, "item": i, "trait": "O", "answer": a, "stance": 4} for p, i, a in rows]
    (f / "judge" / "judge-j-stance.jsonl").write_text("".join(json.dumps(i) + "\n" for i in st))
    gens = [
        {"person": p, "item": i, "statement": f"S{i}", "answer": a, "mc_answer": 2,
         "text": f"{method} says | {p}{i}"}
        for p, i, a in rows
    ]  # fmt: skip
    (f / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))


def _write_runs(tmp_path: Path) -> None:
    """Two methods' finished generation and judge outputs, written by hand."""
    runs = tmp_path / "runs" / "open-ended-m"
    for method, scores in (("vanilla", [3, 3, 2, 4]), ("few-shot", [4, 3, 2, 2])):
        f = runs / method
        (f / "judge").mkdir(parents=True)
        (f / "results.json").write_text(
            json.dumps(
                {
                    "model": {"id": "org/m-1"},
                    "method": {"name": method},
                    "n_persons": 2,
                    "n_items": 2,
                    "timings": {"seconds_per_person": 1.0},
                }
            )
        )
        items = [
            {"person": p, "item": i, "score": s, "weighted": None, "error": None}
            for (p, i), s in zip([("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")], scores)
        ]
        (f / "judge" / "judge-j.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
        (f / "judge" / "judge-j.json").write_text(
            json.dumps(
                {
                    "judge": {"kind": "remote", "model": "j", "base_url": "http://h/v1"},
                    "protocol": "score-first",
                }
            )
        )
        (f / "judge" / "judge-j-stance.json").write_text(json.dumps(STANCE))
        _write_items(f, method)


def test_report_only_page_from_finished_folders(tmp_path: Path, capsys) -> None:
    """The page from two methods' judge outputs written by hand: rows, W/T/L, missing
    validation, commands; a third method without outputs is listed as not finished."""
    _write_runs(tmp_path)
    out = tmp_path / "page"
    argv = [
        "--model", "m", "--persons", "2", "--items", "2", "--methods", "vanilla,few-shot,pas",
        "--judge-model", "j", "--base-url", "http://h/v1", "--runs", str(tmp_path / "runs"),
        "--out", str(out), "--report-only", "--name", "p",
    ]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    d = json.loads((out / "p.json").read_text())
    assert d["missing"] == ["pas"] and d["persons"] == ["a", "b"] and d["baseline"] == "vanilla"
    fs = d["rows"][1]
    # few-shot: a (4+3)/2 = 3.5 vs vanilla 3.0 (win), b (2+2)/2 = 2.0 vs 3.0 (loss)
    assert fs["vs_base"] == {"wins": 1, "ties": 0, "losses": 1, "n": 2}
    assert fs["rubric"]["score"]["mean"] == pytest.approx(2.75)
    page = (out / "p.md").read_text()
    assert "| few-shot | 2.75 [" in page and "| 1/0/1 |" in page
    assert "**Judge validation**: missing" in page and "Not finished yet: pas." in page
    # every answer read as 4: a (1 + 1) / 2 = 1.0, b 0.0 -> 0.50
    assert d["reference"]["stance"]["reading"] == 4 and d["reference"]["stance"]["share"] == 1.0
    assert "reading *every* answer as 4 gives a stance error of 0.50 [" in page
    assert "--report-only" not in page
    # examples: person a's statements, each finished method's text (a '|' escaped), MC, stance
    assert [e["item"] for e in d["examples"]] == ["1", "2"]
    assert "**S1** (the person's answer: 5)" in page
    assert "| few-shot | 2 | 4 | few-shot says \\| a1 |" in page
    assert d["rows"][1]["voice"] == {"first_person": 0, "n": 4, "share": 0.0}
    assert "an OpenAI-compatible endpoint (http://h/v1)" in page
    assert "palign judge " in page and "--mode stance --name judge-j" in page
    assert "palign generate-eval --method pas --model m" in page and "--steer-position all" in page
    assert (out / "p.png").stat().st_size > 1000


def test_a_judge_step_is_skipped_only_when_its_output_covers_the_generations(
    tmp_path: Path,
) -> None:
    p = tmp_path / "j.json"
    assert not _fresh(p, 10, "j", "score-first")
    d = {
        "requests": {"errors": 0},
        "n_items": 9,
        "skipped_no_answer": 1,
        "judge": {"model": "j"},
        "protocol": "score-first",
    }
    p.write_text(json.dumps(d))
    assert _fresh(p, 10, "j", "score-first")
    assert not _fresh(p, 12, "j", "score-first")  # more generations since
    assert not _fresh(p, 10, "other", "score-first") and not _fresh(p, 10, "j", "reasoning")
    p.write_text(json.dumps({**d, "requests": {"errors": 2}}))
    assert not _fresh(p, 10, "j", "score-first")  # failed requests: rerun to retry them


def test_alphas_from_reaches_the_pas_runs_and_the_page(tmp_path: Path, capsys) -> None:
    """``--alphas-from PATH``: each PAS entry's generate-eval gets ``PATH:<method>@<pos>``,
    runs into its own folder, and the page names the source rows and their sha256."""
    from open_ended_table import _folder_name, _method_args

    assert _method_args("pas", "t.json") == (
        "pas",
        ["--steer-position", "all", "--alphas-from", "t.json:pas@all"],
    )
    assert _method_args("pas+few-shot@last", "t.json")[1][-1] == "t.json:pas+few-shot@last"
    assert _method_args("few-shot", "t.json") == ("few-shot", [])
    assert _method_args("pas")[1] == ["--steer-position", "all"]
    assert _folder_name("pas", "t.json") == "pas-alphas-reused"
    assert _folder_name("vanilla", "t.json") == "vanilla" and _folder_name("pas", None) == "pas"
    runs = tmp_path / "runs" / "open-ended-m"
    src = {"path": "docs/results/t.json", "entry": "pas@all", "kind": "papi-table"}
    src["sha256"] = "ab" * 32
    for folder, method in (("vanilla", {"name": "vanilla"}), ("pas-alphas-reused", None)):
        f = runs / folder
        (f / "judge").mkdir(parents=True)
        rec = method or {"name": "pas", "alphas_from": src}
        (f / "results.json").write_text(
            json.dumps(
                {
                    "model": {"id": "org/m-1"},
                    "method": rec,
                    "n_persons": 1,
                    "n_items": 1,
                    "timings": {"seconds_per_person": 1.0},
                }
            )
        )
        item = {"person": "a", "item": "1", "score": 3, "weighted": None, "error": None}
        (f / "judge" / "judge-j.jsonl").write_text(json.dumps(item) + "\n")
        (f / "judge" / "judge-j.json").write_text(
            json.dumps({"judge": {"kind": "remote", "model": "j"}, "protocol": "score-first"})
        )
        (f / "judge" / "judge-j-stance.json").write_text(json.dumps(STANCE))
        _write_items(f, method)
    out = tmp_path / "page"
    argv = [
        "--model", "m", "--persons", "1", "--items", "1", "--methods", "vanilla,pas",
        "--judge-model", "j", "--runs", str(tmp_path / "runs"), "--out", str(out),
        "--report-only", "--name", "p", "--alphas-from", "docs/results/t.json",
    ]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    d = json.loads((out / "p.json").read_text())
    assert d["missing"] == [] and d["config"]["alphas_from"] == "docs/results/t.json"
    assert d["generation"]["pas"]["alphas_from"] == src
    assert d["generation"]["vanilla"]["alphas_from"] is None
    page = (out / "p.md").read_text()
    assert "--alphas-from docs/results/t.json:pas@all" in page
    assert "pas: row `pas@all` of `t.json` (sha256 `abababababab...`)" in page
    assert "heldout (reused)" in page


def test_constant_reading_reference_by_hand() -> None:
    """The anchor of a weak judge: its modal stance reading over every method, and the
    stance error of reading every answer as that value, computed by hand."""

    def st(person: str, answer: int, stance: int | None) -> dict:
        return {"person": person, "item": "i", "trait": "O", "answer": answer, "stance": stance}

    stance_items = {
        "m1": [st("a", 5, 4), st("a", 1, 4), st("b", 3, 4), st("b", 4, 2)],
        "m2": [st("a", 5, 4), st("a", 1, 3), st("b", 3, None), st("b", 4, 4)],
    }
    rubric = {"m1": [_it("a", 4), _it("a", 4), _it("b", None)], "m2": [_it("b", 2)]}
    ref = constant_reference(stance_items, rubric)
    assert ref is not None
    s = ref["stance"]
    assert (s["reading"], s["n_readings"]) == (4, 7) and s["share"] == pytest.approx(
        5 / 7, abs=1e-4
    )
    # every answer read as 4: a |4-5|, |4-1| -> 2.0; b |4-3|, |4-4| -> 0.5; mean 1.25
    assert s["error"]["mean"] == pytest.approx(1.25) and s["error"]["n"] == 2
    assert (s["error"]["lo"], s["error"]["hi"]) == pytest.approx((0.0, 4.0))  # clipped, 1 trait
    assert ref["rubric"] == {"score": 4, "share": pytest.approx(2 / 3, abs=1e-4), "n": 3}
    assert constant_reference({"m": [st("a", 5, None)]}, {}) is None


def test_several_validations_on_the_page(tmp_path: Path, capsys) -> None:
    """--validation repeated: one line per judge-validate result, with the mean reading per
    instructed stance."""
    _write_runs(tmp_path)
    files = []
    for gen, readings in (("g-small", [4, 4, 4, 4, 4]), ("g-big", [1, 2, 3, 4, 5])):
        v = {
            "mode": "stance", "protocol": "score-first",
            "judge": {"model": "j", "resolved_models": ["j-1"], "base_url": None},
            "known_answers": {"generator": gen, "items": 10, "max_new_tokens": 64, "seed": 0},
            "folder": f"runs/kv-{gen}", "n_texts": 50,
            "unparsed_rate": 0.0, "spearman": None, "exact_agreement": 0.2, "within_one": 0.6,
            "mae": 1.4, "spearman_weighted": 0.1, "mae_weighted": 1.3,
            "per_level": {str(k + 1): {"n": 10, "mean_reading": r} for k, r in enumerate(readings)},
        }  # fmt: skip
        files.append(tmp_path / f"{gen}.json")
        files[-1].write_text(json.dumps(v))
    out = tmp_path / "page"
    argv = [
        "--model", "m", "--persons", "2", "--items", "2", "--methods", "vanilla,few-shot",
        "--judge-model", "j", "--runs", str(tmp_path / "runs"), "--out", str(out),
        "--report-only", "--name", "p", "--validation", str(files[0]),
        "--validation", str(files[1]),
    ]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    d = json.loads((out / "p.json").read_text())
    assert [v["generator"] for v in d["validation"]] == ["g-small", "g-big"]
    page = (out / "p.md").read_text()
    assert "texts written by g-small" in page and "texts written by g-big" in page
    assert "per instructed stance 1..5: 4.00, 4.00, 4.00, 4.00, 4.00." in page
    assert "per instructed stance 1..5: 1.00, 2.00, 3.00, 4.00, 5.00." in page
    assert "**Judge validation**: missing" not in page
    assert (
        "palign judge-validate --out runs/kv-g-big --generator g-big --judge-model j "
        "--items 10 --gen-max-tokens 64\n" in page
    )


def test_first_person_share() -> None:
    texts = [
        "I like parties.",
        "I'm tidy most days.",
        '"My desk is a mess," I admit.',
        "As someone who plans ahead, I never panic.",
        "Based on your descriptions, you are tidy.",
        "This suggests that the individual likes order.",
        "Ice cream is my favourite.",  # 'Ice' is not 'I'
        "",
    ]
    assert first_person_share(texts) == {"first_person": 4, "n": 8, "share": 0.5}
    assert first_person_share([])["share"] is None


def test_steering_summary_counts_alphas_and_identical_texts_by_hand(tmp_path: Path, capsys) -> None:
    """What PAS steered: per person the alpha from ``persons/<id>.json``, the texts identical
    to the base method's (all / alpha 0 / steered) and the steered persons' figures next to
    the base's, counted by hand; the page states them."""
    import shutil

    from open_ended_table import base_entry, steering_summary

    assert base_entry("pas") == "vanilla" and base_entry("pas@last") == "vanilla"
    assert base_entry("pas+few-shot@all") == "few-shot" and base_entry("few-shot") is None
    _write_runs(tmp_path)
    runs = tmp_path / "runs" / "open-ended-m"
    f = runs / "pas_few-shot"
    shutil.copytree(runs / "few-shot", f)
    (f / "persons").mkdir()
    for p, alpha in (("a", 0.0), ("b", 2.0)):
        (f / "persons" / f"{p}.json").write_text(
            json.dumps({"person": p, "info": {"alpha": alpha}})
        )
    gens = read_jsonl(f / "generations.jsonl")
    gens[3]["text"] = "steered away"  # b2 differs from few-shot's; a1, a2, b1 do not
    (f / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))
    rows = [
        {"method": "few-shot", "rubric": {"person_score": {"a": 3.5, "b": 2.0}},
         "stance": {"person_sums": {"a": 1.0, "b": 3.0}}},
        {"method": "pas+few-shot", "rubric": {"person_score": {"a": 3.5, "b": 4.5}},
         "stance": {"person_sums": {"a": 1.0, "b": None}}},
    ]  # fmt: skip
    folders = {"few-shot": runs / "few-shot", "pas+few-shot": f}
    gens = {e: read_jsonl(g / "generations.jsonl") for e, g in folders.items()}
    s = steering_summary(folders, rows, gens)["pas+few-shot"]
    assert s["base"] == "few-shot" and s["alphas"] == {"a": 0.0, "b": 2.0}
    assert s["steered"] == ["b"] and s["n_persons"] == 2
    assert s["identical"] == {
        "all": {"same": 3, "n": 4},
        "alpha0": {"same": 2, "n": 2},
        "steered": {"same": 1, "n": 2},
    }
    assert s["steered_figures"] == {
        "rubric": 4.5,
        "base_rubric": 2.0,
        "stance_error": None,  # b's stance sum is not complete
        "base_stance_error": 3.0,
    }
    assert steering_summary({"few-shot": runs / "few-shot"}, rows, gens) == {}
    # the page: the pas+few-shot folder has judge outputs copied from few-shot
    out = tmp_path / "page"
    argv = [
        "--model", "m", "--persons", "2", "--items", "2", "--methods", "vanilla,few-shot,pas+few-shot",
        "--judge-model", "j", "--runs", str(tmp_path / "runs"), "--out", str(out),
        "--report-only", "--name", "p",
    ]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    d = json.loads((out / "p.json").read_text())
    assert d["steering"]["pas+few-shot"]["identical"]["all"] == {"same": 3, "n": 4}
    page = (out / "p.md").read_text()
    assert "**What PAS steered**" in page
    assert (
        "- pas+few-shot: alpha > 0 for 1 of 2 persons (b: 2); texts identical to few-shot's: "
        "3/4 (2/2 of the persons at alpha 0, 1/2 of the steered); on the 1 steered person: "
        "rubric 2.00 against few-shot's 2.00" in page
    )
