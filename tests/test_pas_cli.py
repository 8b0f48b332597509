"""PAS end to end on a tiny random model: the method never reads test answers, adapters via
the CLI (align -> generate), answers files, AlignedModel batches, P² for a new person."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from palign.cli import main
from palign.data.answers import person_from_answers, read_answers_file
from palign.data.types import Dataset
from palign.errors import PalignError
from palign.methods import MethodConfig, get_method
from palign.models.loading import LoadedModel
from tests.test_runs import small


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_pas_never_reads_test_answers(papi: Dataset, tiny_lm: LoadedModel, cache: Path) -> None:
    ds = small(papi, 4)
    person = ds.persons[0]
    opts = {"alpha_grid": [0.0, 1.0, 4.0], "k": 6}
    a = get_method("pas", MethodConfig("agreement", 0, opts)).fit(tiny_lm, ds, person)
    scrambled = copy.deepcopy(person)
    for iid in papi.inventory.test_ids:
        scrambled.stored[iid] = 6 - scrambled.stored[iid] if scrambled.stored[iid] else 5
    b = get_method("pas", MethodConfig("agreement", 0, opts)).fit(tiny_lm, ds, scrambled)
    assert a.info == b.info and torch.equal(a.steering, b.steering)
    assert a.info["alpha_selection"] == "heldout-kfold"
    # the oracle path does read them, and says so
    o = get_method("pas", MethodConfig("agreement", 0, {**opts, "alpha_selection": "oracle"}))
    info = o.fit(tiny_lm, ds, person).info
    assert info["alpha_selection"] == "oracle" and "ORACLE" in info["warning"]


def test_pas_few_shot_masks_held_out_items(
    papi: Dataset, tiny_lm: LoadedModel, cache: Path
) -> None:
    ds = small(papi, 3)
    m = get_method("pas+few-shot", MethodConfig("agreement", 0, {"alpha_grid": [0.0, 2.0], "k": 4}))
    p = ds.persons[0]
    hidden = set(ds.inventory.shown_ids[:5])
    text = m.system_prompt(ds, p, hidden)
    for iid in ds.inventory.shown_ids:
        assert (f"{ds.inventory.item(iid).text}:" in text) == (
            iid not in hidden and p.stored[iid] != 0
        )


def test_answers_files(tmp_path: Path, papi: Dataset) -> None:
    inv = papi.inventory
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"answers": {"1": 5, "300": 1}}))
    answers = read_answers_file(good, inv)
    assert answers == {"1": 5, "300": 1}
    inv2, person = person_from_answers(inv, answers)
    assert inv2.shown_ids == ["1", "300"] and len(inv2.test_ids) == 298
    assert person.answers(inv2, "agreement", ["1", "300"]) == {"1": 5, "300": 1}
    csv = tmp_path / "a.csv"
    csv.write_text("item,answer\n1,4\n2,2\n")
    assert read_answers_file(csv, inv) == {"1": 4, "2": 2}
    bad = {
        "unknown.json": ('{"999": 3}', "unknown item id '999'"),
        "range.json": ('{"1": 6}', "answers are 1..5"),
        "empty.json": ("", "is empty"),
        "broken.json": ('{"1": ', "not valid JSON"),
        "list.json": ("[1, 2]", "expected an object"),
        "short.csv": ("1\n", "two columns"),
    }
    for name, (content, needle) in bad.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(PalignError, match=needle):
            read_answers_file(tmp_path / name, inv)
    with pytest.raises(PalignError, match="not found"):
        read_answers_file(tmp_path / "missing.json", inv)


def test_align_generate_cli(
    tmp_path: Path, papi_dir: Path, tiny_folder: Path, cache: Path, capsys
) -> None:
    out = tmp_path / "adapter"
    answers = tmp_path / "me.json"
    answers.write_text(json.dumps({str(i): (i % 5) + 1 for i in range(1, 41)}))
    argv = [
        "align",
        "--answers",
        str(answers),
        "--model",
        str(tiny_folder),
        "--data",
        str(papi_dir),
        "--out",
        str(out),
        "--alpha-grid",
        "0,2",
        "--k",
        "4",
        "--format",
        "json",
    ]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["person"] == "answers-file" and d["alpha"] in (0.0, 2.0) and len(d["heads"]) == 4
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["alpha_selection"] == "heldout-kfold" and cfg["extra"]["model_spec"] == str(
        tiny_folder
    )
    assert len(cfg["extra"]["shown_items"]) == 40

    def generate(alpha: str) -> dict:
        argv = ["generate", "--adapter", str(out), "Hello", "--max-new-tokens", "6"]
        assert main([*argv, "--alpha", alpha, "--format", "json"]) == 0
        return json.loads(capsys.readouterr().out)

    g0, g_strong = generate("0"), generate("400")
    assert g0["alpha"] == 0 and g_strong["alpha"] == 400
    # strong steering changes the generated text; the same alpha gives the same text
    assert g_strong["text"] != g0["text"]
    assert generate("400")["text"] == g_strong["text"]
    # bad input: one line, exit 2
    for bad_argv, needle in [
        (
            ["align", "--person", "1", "--out", str(tmp_path / "x"), "--data", str(papi_dir)],
            "unknown person '1'",
        ),
        (["align", "--out", str(tmp_path / "x")], "exactly one of --person"),
        (
            ["align", "--person", "172481", "--method", "few-shot", "--out", str(tmp_path / "x")],
            "pas or pas+few-shot",
        ),
        (["generate", "--adapter", str(tmp_path / "nothing"), "hi"], "not a palign adapter"),
        (
            [
                "align",
                "--person",
                "172481",
                "--alpha-selection",
                "fixed",
                "--out",
                str(tmp_path / "x"),
            ],
            "needs --alpha",
        ),
    ]:
        assert main(bad_argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err


def test_many_personalities_one_batch(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, cache: Path
) -> None:
    from palign.chat import AlignedModel
    from palign.steering.adapter import load_adapter, save_adapter

    ds = small(papi, 2)
    m = get_method(
        "pas", MethodConfig("agreement", 0, {"alpha_selection": "fixed", "alpha": 3.0, "k": 4})
    )
    adapters = []
    for k, p in enumerate(ds.persons[:2]):
        m.setup(tiny_lm, ds)
        res = m.fit_result(tiny_lm, ds, p)
        save_adapter(
            tmp_path / f"a{k}",
            res,
            model_id=tiny_lm.model_id,
            arch=m.arch,
            inventory="ipip-neo",
            semantics="agreement",
            person=p.id,
        )
        adapters.append(load_adapter(tmp_path / f"a{k}", tiny_lm))
    am = AlignedModel(tiny_lm)
    prompts = ["Tell me about you.", "Tell me about you.", "Tell me about you."]
    batch = am.generate_many(prompts, adapters=[adapters[0], None, adapters[1]], max_new_tokens=5)
    alone = [
        AlignedModel(tiny_lm, a).generate(prompts[0], max_new_tokens=5)
        for a in (adapters[0], None, adapters[1])
    ]
    assert batch == alone


def test_personality_prompt_generates_for_new_person(papi: Dataset, tiny_lm: LoadedModel) -> None:
    ds = small(papi, 2)
    p = copy.deepcopy(ds.persons[0])
    p.persona = None
    m = get_method("personality-prompt", MethodConfig("agreement", 0, {"persona_source": "model"}))
    a = m.fit(tiny_lm, ds, p)
    assert a.info["persona_source"] == "model" and a.system_prompt == a.info["persona"]
    assert a.info["persona_model"] == tiny_lm.model_id
    assert m.fit(tiny_lm, ds, p).system_prompt == a.system_prompt  # generated once, cached
    release = get_method("personality-prompt", MethodConfig("paper")).fit(
        tiny_lm, ds, ds.persons[0]
    )
    assert (
        release.info["persona_source"] == "release"
        and release.system_prompt == ds.persons[0].persona
    )


@pytest.mark.parametrize("name", ["pas", "pas+few-shot"])
def test_fit_many_equals_fit_one_by_one(
    name: str, papi: Dataset, tiny_lm: LoadedModel, cache: Path
) -> None:
    ds = small(papi, 3)
    persons = ds.persons[:3]
    # the sharing of readout calls does not depend on the position; the ~1,500-token few-shot
    # prefix at all positions costs minutes here (its parity is tested on short prompts in
    # test_readout_positions.py), so pas+few-shot runs at the last position
    position = "last" if name == "pas+few-shot" else "all"
    opts = {"alpha_grid": [0.0, 2.0, 8.0], "k": 4, "steer_position": position}
    many = get_method(name, MethodConfig("agreement", 0, opts)).fit_many(tiny_lm, ds, persons)
    one = get_method(name, MethodConfig("agreement", 0, opts))
    for p, a in zip(persons, many):
        b = one.fit(tiny_lm, ds, p)
        assert a.info["alpha"] == b.info["alpha"] and a.info["heads"] == b.info["heads"]
        assert a.info["validation_errors"] == pytest.approx(b.info["validation_errors"], abs=1e-9)
        assert torch.allclose(a.steering, b.steering) and a.system_prompt == b.system_prompt


def test_fit_many_few_shot_all_positions(papi: Dataset, tiny_lm: LoadedModel, cache: Path) -> None:
    """pas+few-shot at all positions: the batched alpha search (every person's few-shot
    prefix per steering row, all persons of a fold in one readout) equals one person at a
    time. 15 shown items keep the few-shot prefixes short enough for ``all`` here."""
    tiny = small(papi, 3)
    tiny.inventory.shown_ids = tiny.inventory.shown_ids[:15]
    tiny.inventory.__post_init__()
    persons = tiny.persons[:3]
    # large alphas: the tiny random model's answers move only under strong steering
    opts = {"alpha_grid": [0.0, 100.0, 1000.0], "k": 3, "steer_position": "all"}
    config = MethodConfig("agreement", 0, opts)
    many = get_method("pas+few-shot", config).fit_many(tiny_lm, tiny, persons)
    one = get_method("pas+few-shot", MethodConfig("agreement", 0, dict(opts)))
    for p, a in zip(persons, many):
        b = one.fit(tiny_lm, tiny, p)
        assert a.info["steer_position"] == "all"
        assert a.info["alpha"] == b.info["alpha"] and a.info["heads"] == b.info["heads"]
        assert a.info["validation_errors"] == pytest.approx(b.info["validation_errors"], abs=1e-9)
        assert torch.allclose(a.steering, b.steering) and a.system_prompt == b.system_prompt
    # the few-shot prompts differ per person, and not every alpha scores the same
    assert len({a.system_prompt for a in many}) == len(persons)
    assert any(len(set(a.info["validation_errors"].values())) > 1 for a in many)
