"""``palign judge --mode stance`` and the generations' multiple-choice answers (``mc_answer``).

A scripted in-process judge backend reads the digit it answers from the generated text
("reading=<d>") and returns log-probabilities around it, so every figure of the stance mode
(per-item errors, trait MAEs, per-person sums with their t-interval, weighted errors, the
consistency with ``mc_answer``) is compared with a hand computation on a synthetic generation
folder. ``mc_answer`` of ``generate-eval`` is compared with what ``palign eval`` predicts for
the same persons and items (vanilla, and PAS under fixed steering, which changes answers).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from palign.cli import main
from palign.data.types import Dataset
from palign.judge.client import CachedJudge, JudgeRequest, JudgeResponse
from palign.judge.generate import GenerateConfig, read_jsonl, run_generate
from palign.judge.prompts import stance_prompt
from palign.judge.stance import judge_stance
from palign.models.loading import LoadedModel
from tests.test_runs import small

T12 = 12.706204736174696  # Student-t 97.5% quantile, 1 degree of freedom
T2 = 4.302652729749464  # ... 2 degrees of freedom


class ScriptedJudge:
    """A judge backend whose reading is written in the text: ``reading=<d>`` -> ``"<d>"``.

    The reply's first token carries probability 0.7 on the digit and 0.3 on its upper
    neighbour (lower for 5), so the weighted reading is ``d + 0.3`` (``4.7`` for 5). A text
    without ``reading=`` gets an unparseable reply.
    """

    identity = "scripted:stance"
    name = "scripted"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted", "model": "scripted"}

    def complete_many(
        self,
        requests: Sequence[JudgeRequest],
        progress: bool = False,
        on_result: Callable[[int, JudgeResponse], None] | None = None,
    ) -> list[JudgeResponse]:
        out = []
        for k, r in enumerate(requests):
            self.prompts.append(r.prompt)
            m = re.search(r"reading=(\d)", r.prompt)
            if m is None:
                resp = JudgeResponse("I cannot say.", [], "stop", model="scripted-1")
            else:
                d = int(m.group(1))
                nb = d + 1 if d < 5 else d - 1
                top = {str(d): math.log(0.7), str(nb): math.log(0.3)}
                cands = [{"token": str(d), "top": top, "offset": 0}]
                resp = JudgeResponse(f"{d}\nbecause", cands, "stop", model="scripted-1")
            if on_result is not None:
                on_result(k, resp)
            out.append(resp)
        return out


def weighted_of(d: int) -> float:
    return d + 0.3 if d < 5 else 4.7


# person -> rows (trait, answer, reading or None, mc_answer or None)
SYNTH: dict[str, list[tuple[str, int, int | None, int | None]]] = {
    "p1": [
        ("O", 5, 4, 5),
        ("C", 2, 2, 1),
        ("E", 1, 4, 2),
        ("A", 4, 5, 5),
        ("A", 3, 3, 3),
        ("N", 3, 1, 2),
    ],
    "p2": [("O", 1, 1, 1), ("C", 5, 3, None), ("E", 4, 4, 3), ("A", 2, 1, 4), ("N", 5, 5, 5)],
    "p3": [("O", 3, None, 3), ("C", 3, 3, 3), ("E", 2, 5, 1), ("A", 1, 2, 2), ("N", 4, 4, 4)],
}


def synthetic_folder(path: Path, with_mc: bool = True) -> Path:
    """A generation folder written by hand (config.json + generations.jsonl)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        json.dumps({"config": {"method": "synthetic", "semantics": "agreement"}})
    )
    rows = []
    for pid, spec in SYNTH.items():
        for k, (trait, ans, reading, mc) in enumerate(spec):
            row = {
                "person": pid,
                "item": f"{trait}{k}",
                "trait": trait,
                "statement": f"You like {trait} number {k}.",
                "answer": ans,
                "answer_label": "x",
                "text": f"I am who I am. reading={reading}" if reading else "I am who I am.",
            }
            if with_mc:
                row["mc_answer"] = mc
            rows.append(row)
    # a blank answer of the person: skipped, counted
    rows.append({**rows[0], "item": "blank", "answer": None, "answer_label": None})
    with open(path / "generations.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def test_stance_errors_and_consistency_equal_a_hand_computation(tmp_path: Path) -> None:
    folder = synthetic_folder(tmp_path / "g")
    judge = ScriptedJudge()
    res = judge_stance(folder, judge, progress=False)
    # the stance prompt, score-first, five choices
    assert len(judge.prompts) == 16  # the blank answer is not judged
    assert judge.prompts[0] == stance_prompt("You like O number 0.", "I am who I am. reading=4")
    assert res["mode"] == "stance" and res["skipped_no_answer"] == 1
    assert res["prompts"]["stance_version"] == "t1" and res["protocol"] == "score-first"
    assert res["judge"]["resolved_models"] == ["scripted-1"]
    # per-item errors: |reading - answer|
    items = read_jsonl(folder / "judge" / "scripted-stance.jsonl")
    assert res["items_file"].endswith("scripted-stance.jsonl")
    assert (folder / "judge" / "scripted-stance.json").is_file()
    assert [i["abs_error"] for i in items] == [1, 0, 3, 1, 0, 2, 0, 2, 0, 1, 0, None, 0, 3, 1, 0]
    assert items[0]["weighted"] == pytest.approx(4.3) and items[0]["stance"] == 4
    assert items[0]["abs_error_weighted"] == pytest.approx(0.7)
    # overall and per-trait MAE over parsed items (p3's O is unparsed)
    assert res["unparsed_rate"] == pytest.approx(1 / 16, abs=1e-4)
    assert res["counts"]["overall"]["unparsed"] == 1
    assert res["error"]["overall"]["mean"] == pytest.approx(14 / 15, abs=1e-4)
    assert res["error"]["traits"]["E"]["mean"] == pytest.approx(2.0)
    assert res["error"]["traits"]["A"]["mean"] == pytest.approx(3 / 4)
    # per person: sum of trait MAEs (A of p1 = mean of 1 and 0); p3 lacks O: no sum
    sums = {p["person"]: p["sum"] for p in res["error"]["persons"]}
    assert sums == {"p1": pytest.approx(6.5), "p2": pytest.approx(3.0), "p3": None}
    ps = res["error"]["person_sum"]
    assert res["error"]["n_persons_complete"] == 2 and ps["n"] == 2
    half = T12 * (3.5 / math.sqrt(2)) / math.sqrt(2)
    assert ps["mean"] == pytest.approx(4.75)
    assert (ps["lo"], ps["hi"]) == pytest.approx((max(0.0, 4.75 - half), min(20.0, 4.75 + half)))
    # weighted errors, re-stated item by item
    werr = []
    for spec in SYNTH.values():
        for _, ans, reading, _ in spec:
            if reading is not None:
                werr.append(abs(weighted_of(reading) - ans))
    assert res["error_weighted"]["overall"]["mean"] == pytest.approx(
        sum(werr) / len(werr), abs=1e-4
    )
    # the multiple-choice answers' own error on the same rows: p1 = 0+1+1+0.5+1, p3 = 0+0+1+1+0
    mc_sums = {p["person"]: p["sum"] for p in res["mc_error"]["persons"]}
    assert mc_sums == {"p1": pytest.approx(3.5), "p2": None, "p3": pytest.approx(2.0)}
    # consistency: reading vs mc_answer where both parsed (p2's C and p3's O drop out)
    pairs = [
        (reading, mc)
        for spec in SYNTH.values()
        for _, _, reading, mc in spec
        if reading is not None and mc is not None
    ]
    c = res["consistency"]
    assert c["n_items"] == 16 and c["n_both"] == len(pairs) == 14 and c["mc_unparsed"] == 1
    assert c["mae"] == pytest.approx(sum(abs(a - b) for a, b in pairs) / 14, abs=1e-4)
    assert c["exact_agreement"] == pytest.approx(sum(a == b for a, b in pairs) / 14, abs=1e-4)
    assert c["within_one"] == pytest.approx(sum(abs(a - b) <= 1 for a, b in pairs) / 14, abs=1e-4)
    from scipy import stats

    rho = stats.spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    assert c["spearman"] == pytest.approx(rho, abs=1e-4)
    # per-person consistency MAE: p1 (1+1+2+0+0+1)/6, p2 (0+1+3+0)/4, p3 (0+4+0+0)/4
    pm = [5 / 6, 1.0, 1.0]
    m = sum(pm) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in pm) / 2)
    assert c["person_mae"]["mean"] == pytest.approx(m, abs=1e-4)
    assert c["person_mae"]["hi"] == pytest.approx(m + T2 * sd / math.sqrt(3), abs=1e-3)


def test_old_folder_without_mc_answer_is_judged_without_consistency(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    folder = synthetic_folder(tmp_path / "old", with_mc=False)
    res = judge_stance(folder, ScriptedJudge(), name="old", progress=False)
    assert res["consistency"] is None and res["mc_error"] is None
    assert res["error"]["overall"]["mean"] == pytest.approx(14 / 15, abs=1e-4)
    assert "mc_answer" not in read_jsonl(folder / "judge" / "old-stance.jsonl")[0]
    # the CLI (the scripted backend behind the disk cache), human and json
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    import palign.cli.judge as cj

    monkeypatch.setattr(cj, "_backend", lambda args: CachedJudge(ScriptedJudge()))
    argv = ["judge", str(folder), "--judge-model", "x", "--mode", "stance", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "record no multiple-choice answer" in out and "sum of the trait MAEs" in out
    assert "4.75" in out  # the per-person sum
    assert main([*argv, "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["requests"]["cached"] == 16 and d["error"]["person_sum"]["mean"] == 4.75
    assert d["items_file"].endswith("scripted-stance.jsonl")
    # the default mode stays the rubric
    assert main(["judge", str(folder), "--judge-model", "x", "--quiet", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "score"
    rc = main([*argv, "--versus", str(folder)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--versus" in err


def test_mc_answer_is_what_palign_eval_predicts(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, one_thread, monkeypatch
) -> None:
    """``mc_answer`` equals ``palign eval``'s answers for the same persons and items: vanilla,
    and PAS at a fixed alpha (its steering changes some answers against vanilla's)."""
    from palign.eval.runs import RunConfig, run_eval

    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    ds = small(papi, 5)
    ids = [p.id for p in ds.persons[:2]]
    opts = {"alpha_selection": "fixed", "alpha": 100.0, "k": 6}  # moves the tiny model's answers
    got: dict[str, dict[tuple[str, str], int | None]] = {}
    for method, o in (("vanilla", {}), ("pas", opts)):
        gen = GenerateConfig(
            method, model="tiny", persons=ids, max_new_tokens=3, temperature=0.0, options=o
        )
        res = run_generate(gen, tmp_path / f"g-{method}", lm=tiny_lm, dataset=ds, progress=False)
        assert res["format"] == 2 and res["mc"]["readout"] == "logits"
        rows = read_jsonl(tmp_path / f"g-{method}" / "generations.jsonl")
        assert len(rows) == 10 and all(r["mc_answer"] in (1, 2, 3, 4, 5) for r in rows)
        got[method] = {(r["person"], r["item"]): r["mc_answer"] for r in rows}
        ev = run_eval(
            RunConfig(method, model="tiny", persons=ids, options=o),
            tmp_path / f"e-{method}",
            lm=tiny_lm,
            dataset=ds,
            progress=False,
        )
        want = {}
        for pid in ids:
            rec = json.loads((tmp_path / f"e-{method}" / "persons" / f"{pid}.json").read_text())
            want.update({(pid, i): a for i, a in rec["answers"].items()})
        assert len(ev["config"]["persons"]) == 2 and got[method] == want
    # the steering changes answers, per person (vanilla answers 2 everywhere on this model)
    assert got["pas"] != got["vanilla"]
    by_person = [[a for (p, _), a in got["pas"].items() if p == pid] for pid in ids]
    assert by_person[0] != by_person[1]


def test_resume_keeps_old_rows_and_consistency_counts_only_recorded_ones(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, one_thread
) -> None:
    """A format-1 folder (rows without mc_answer) resumes: the old person keeps its rows, the
    new one records mc_answer; the stance mode counts consistency on the recorded rows only."""
    ds = small(papi, 5)
    ids = [p.id for p in ds.persons[:2]]
    cfg = GenerateConfig("few-shot", model="tiny", persons=ids, max_new_tokens=3, temperature=0.0)
    out = tmp_path / "g"
    run_generate(cfg, out, lm=tiny_lm, dataset=ds, progress=False)
    old = out / "persons" / f"{ids[0]}.jsonl"
    rows0 = [{k: v for k, v in r.items() if not k.startswith("mc_")} for r in read_jsonl(old)]
    old.write_text("".join(json.dumps(r) + "\n" for r in rows0))
    (out / "persons" / f"{ids[1]}.jsonl").unlink()
    res = run_generate(cfg, out, lm=tiny_lm, dataset=ds, progress=False)
    assert res["mc"]["n_rows"] == 5
    rows = read_jsonl(out / "generations.jsonl")
    assert [("mc_answer" in r) for r in rows] == [False] * 5 + [True] * 5
    s = judge_stance(out, ScriptedJudge(), progress=False)
    assert s["consistency"]["n_items"] == 5 and s["consistency"]["n_both"] == 0  # unparsed
    assert s["unparsed_rate"] == 1.0 and s["mc_error"]["n_persons_complete"] == 1


@pytest.mark.slow
def test_smollm2_mc_answer_equals_palign_eval_and_stance_judge(
    tmp_path: Path, papi_dir: Path, capsys
) -> None:
    """SmolLM2 (the real embedded model): generate-eval's mc_answer for vanilla equals what
    'palign eval --method vanilla' answers on the same items; the in-process SmolLM2 judge
    reads the answers' stance (1 person, 3 statements)."""
    common = ["--persons", "1", "--max-items", "3", "--data", str(papi_dir), "--quiet"]
    gen = tmp_path / "g"
    argv = ["generate-eval", "--method", "vanilla", *common, "--out", str(gen)]
    assert main([*argv, "--max-new-tokens", "24", "--format", "json"]) == 0
    capsys.readouterr()
    assert main(["eval", "--method", "vanilla", *common, "--out", str(tmp_path / "e")]) == 0
    capsys.readouterr()
    rows = read_jsonl(gen / "generations.jsonl")
    pid = rows[0]["person"]
    rec = json.loads((tmp_path / "e" / "persons" / f"{pid}.json").read_text())
    assert len(rows) == 3 and {r["item"]: r["mc_answer"] for r in rows} == rec["answers"]
    jv = ["judge", str(gen), "--judge-model", "smollm2", "--mode", "stance", "--no-cache"]
    assert main([*jv, "--quiet", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mode"] == "stance" and d["judge"]["model_id"].endswith("SmolLM2-135M-Instruct")
    items = read_jsonl(gen / "judge" / "local-smollm2-stance.jsonl")
    assert len(items) == 3 and all(i["judgement"] for i in items)
    for i in items:
        assert i["mc_answer"] == rec["answers"][i["item"]]
        if i["stance"] is not None:
            assert i["abs_error"] == abs(i["stance"] - i["answer"])
    assert d["consistency"]["n_items"] == 3
