"""``generate-eval``: steering at every position (= an o_proj bias), resume, refusal of a
foreign folder, target labels, the CLI end to end (tiny model; the real one marked slow)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from palign.cli import main
from palign.data.types import Dataset
from palign.errors import PalignError
from palign.judge.generate import GenerateConfig, generate_texts, read_jsonl, run_generate
from palign.models.loading import LoadedModel
from tests.test_runs import small

LABELS = {
    5: "Very Accurate",
    4: "Moderately Accurate",
    3: "Neither Accurate Nor Inaccurate",
    2: "Moderately Inaccurate",
    1: "Very Inaccurate",
}


def test_steering_all_positions_is_an_o_proj_bias(tiny_lm: LoadedModel, one_thread) -> None:
    """The paper's semantics: the shift is a bias of o_proj, present at every position."""
    cfg = tiny_lm.model.config
    g = torch.Generator().manual_seed(1)
    u = torch.randn(cfg.num_hidden_layers, cfg.hidden_size, generator=g) * 0.3
    qs = ["How do you spend a free evening?", "Do you like parties?", "Hi"]
    kw = {"max_new_tokens": 6, "temperature": 0.0, "batch_size": 3}
    steered = generate_texts(tiny_lm, "You are calm.", qs, steering=u, position="all", **kw)
    plain = generate_texts(tiny_lm, "You are calm.", qs, **kw)
    biased = copy.deepcopy(tiny_lm.model)
    for i, layer in enumerate(biased.model.layers):
        layer.self_attn.o_proj.bias = torch.nn.Parameter(u[i].clone())
    lm_b = LoadedModel(
        biased,
        *[
            getattr(tiny_lm, f)
            for f in ("tokenizer", "spec", "model_id", "revision", "device", "dtype")
        ],
    )
    assert generate_texts(lm_b, "You are calm.", qs, **kw) == steered
    assert steered != plain
    # one forward: "all" = the bias everywhere; "last" shifts only the last position, so the
    # earlier positions' shifts (seen through attention) are missing there
    from palign.steering import steer

    ids = tiny_lm.tokenizer("You are calm and you like parties", return_tensors="pt").input_ids
    with torch.no_grad():
        want = biased(ids).logits[0, -1]
        with steer(tiny_lm.model, u[None], position="all"):
            got_all = tiny_lm.model(ids).logits[0, -1]
        with steer(tiny_lm.model, u[None], position="last"):
            got_last = tiny_lm.model(ids).logits[0, -1]
    assert torch.allclose(got_all, want, atol=1e-5)
    assert not torch.allclose(got_last, want, atol=1e-3)


def test_resume_labels_and_foreign_folder(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, one_thread
) -> None:
    ds = small(papi, 4)
    ids = [p.id for p in ds.persons[:2]]
    cfg = GenerateConfig("few-shot", model="tiny", persons=ids, max_new_tokens=5, temperature=0.9)
    out = tmp_path / "g"
    res = run_generate(cfg, out, lm=tiny_lm, dataset=ds, progress=False)
    assert res["n_generations"] == 8 and res["config"]["temperature"] == 0.9
    rows = read_jsonl(out / "generations.jsonl")
    inv = ds.inventory
    for r in rows:
        it = inv.item(r["item"])
        v = ds.person(r["person"]).stored[r["item"]]
        a = v if it.key > 0 else 6 - v  # agreement semantics, restated
        assert r["answer"] == a and r["answer_label"] == LABELS[a]
        assert (
            r["question"]
            == f'Tell me in a few sentences how well this describes you: "{r["statement"]}"'
        )
        assert r["steer_position"] is None and r["method"] == "few-shot"
    first = (out / "persons" / f"{ids[0]}.jsonl").stat().st_mtime_ns
    (out / "persons" / f"{ids[1]}.jsonl").unlink()
    run_generate(cfg, out, lm=tiny_lm, dataset=ds, progress=False)
    assert read_jsonl(out / "generations.jsonl") == rows  # sampled, yet the same after resume
    assert (out / "persons" / f"{ids[0]}.jsonl").stat().st_mtime_ns == first
    other = GenerateConfig("few-shot", model="tiny", persons=ids, max_new_tokens=5, temperature=0.5)
    with pytest.raises(PalignError, match=r"different configuration \(temperature\)"):
        run_generate(other, out, lm=tiny_lm, dataset=ds, progress=False)


def test_pas_generations_are_steered(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, one_thread, monkeypatch
) -> None:
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    ds = small(papi, 2)
    opts = {"alpha_selection": "fixed", "alpha": 8.0, "k": 6}
    base = {"model": "tiny", "persons": [ds.persons[0].id], "max_new_tokens": 6, "temperature": 0.0}
    pas = run_generate(
        GenerateConfig("pas", options=opts, **base),
        tmp_path / "p",
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    assert pas["n_generations"] == 2
    rows = read_jsonl(tmp_path / "p" / "generations.jsonl")
    assert {r["steer_position"] for r in rows} == {"all"}
    info = json.loads((tmp_path / "p" / "persons" / f"{ds.persons[0].id}.json").read_text())["info"]
    assert info["alpha"] == 8.0
    # alpha 0 = the same prompt without steering: the steered texts differ from it
    opts0 = {**opts, "alpha": 0.0}
    run_generate(
        GenerateConfig("pas", options=opts0, **base),
        tmp_path / "p0",
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    rows0 = read_jsonl(tmp_path / "p0" / "generations.jsonl")
    assert [r["text"] for r in rows] != [r["text"] for r in rows0]


def test_cli_generate_then_local_judge(
    tmp_path: Path, papi_dir: Path, tiny_folder: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "g"
    argv = [
        "generate-eval",
        "--method",
        "vanilla",
        "--model",
        str(tiny_folder),
        "--persons",
        "2",
        "--max-items",
        "2",
        "--data",
        str(papi_dir),
        "--out",
        str(out),
        "--max-new-tokens",
        "4",
        "--quiet",
        "--format",
        "json",
    ]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_generations"] == 4 and d["model"]["id"] == str(tiny_folder)
    jv = ["judge", str(out), "--judge-model", str(tiny_folder), "--max-tokens", "4", "--quiet"]
    assert main([*jv, "--format", "json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["judge"]["kind"] == "local" and j["n_items"] == 4 and j["requests"]["cached"] == 0
    assert j["unparsed_rate"] == 1.0  # a random model does not follow the rubric
    assert main(jv) == 0  # the table; all from the cache now
    human = capsys.readouterr().out
    assert "unparsed rate 1.000" in human and "cached 4" in human
    # bad input: one line, exit 2
    rc = main([*argv[:-2], "--temperature", "-1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    rc = main([*argv[:-2], "--max-new-tokens", "8"])  # another configuration, same folder
    err = capsys.readouterr().err
    assert rc == 2 and "different configuration (max_new_tokens)" in err


@pytest.mark.slow
def test_real_model_generate_and_local_judge(tmp_path: Path, papi_dir: Path, capsys) -> None:
    """The embedded SmolLM2 as generator (vanilla, 1 person, 2 items) and as local judge."""
    out = tmp_path / "g"
    argv = [
        "generate-eval",
        "--method",
        "vanilla",
        "--persons",
        "1",
        "--max-items",
        "2",
        "--data",
        str(papi_dir),
        "--out",
        str(out),
        "--max-new-tokens",
        "16",
        "--quiet",
        "--format",
        "json",
    ]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_generations"] == 2 and d["model"]["id"].endswith("SmolLM2-135M-Instruct")
    rows = read_jsonl(out / "generations.jsonl")
    assert all(r["text"] for r in rows)
    assert (
        main(
            [
                "judge",
                str(out),
                "--judge-model",
                "smollm2",
                "--max-tokens",
                "16",
                "--quiet",
                "--no-cache",
                "--format",
                "json",
            ]
        )
        == 0
    )
    j = json.loads(capsys.readouterr().out)
    assert j["judge"]["model_id"].endswith("SmolLM2-135M-Instruct") and j["n_items"] == 2
    items = read_jsonl(out / "judge" / "local-smollm2.jsonl")
    assert j["items_file"].endswith("local-smollm2.jsonl") and len(items) == 2
    assert all(i["judgement"] for i in items) and j["unparsed_rate"] is not None


def test_lora_methods_generate_with_their_adapter(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, one_thread
) -> None:
    """Training baselines (Aligned.lora) answer with the person's LoRA adapter active."""
    peft = pytest.importorskip("peft")
    from palign.methods.base import Aligned, Method

    model = copy.deepcopy(tiny_lm.model)
    torch.manual_seed(0)
    cfg = peft.LoraConfig(
        r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    pm = peft.get_peft_model(model, cfg)
    pm.save_pretrained(tmp_path / "lora")
    merged = pm.merge_and_unload()

    class WithLora(Method):
        name = "with-lora"

        def fit(self, lm, dataset, person):  # noqa: ANN001, ANN201
            return Aligned(person.id, None, lora=str(tmp_path / "lora"))

    ds = small(papi, 2)
    base = {"model": "tiny", "persons": [ds.persons[0].id], "max_new_tokens": 6, "temperature": 0.0}
    run_generate(
        GenerateConfig("with-lora", **base),
        tmp_path / "g",
        lm=tiny_lm,
        dataset=ds,
        method=WithLora(),
        progress=False,
    )
    rows = read_jsonl(tmp_path / "g" / "generations.jsonl")
    assert all(r["lora"] for r in rows)
    lm_m = LoadedModel(merged, tiny_lm.tokenizer, "m", "m", None, tiny_lm.device, tiny_lm.dtype)
    want = generate_texts(lm_m, None, [r["question"] for r in rows], max_new_tokens=6)
    plain = generate_texts(tiny_lm, None, [r["question"] for r in rows], max_new_tokens=6)
    assert [r["text"] for r in rows] == want != plain
    # the adapter is gone afterwards
    assert generate_texts(tiny_lm, None, [rows[0]["question"]], max_new_tokens=6) == plain[:1]
