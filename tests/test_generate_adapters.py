"""``palign generate-eval --method dpo`` reuses trained adapters (issue #23, item 13): the
configuration-keyed cache by default, or another run's folder with ``--adapters DIR``."""

from __future__ import annotations

import json
from pathlib import Path

from palign.data.types import Dataset


def test_generate_eval_reuses_adapters(
    papi: Dataset, papi_dir: Path, tiny_folder: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import palign.train.dpo as dpo_mod
    from palign.cli import main

    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    pid = papi.persons[0].id
    argv = ["generate-eval", "--method", "dpo", "--model", str(tiny_folder), "--person", pid]
    argv += ["--data", str(papi_dir), "--max-items", "1", "--max-new-tokens", "2", "--quiet"]
    argv += ["--train-steps", "1", "--train-batch", "2", "--train-option", "lora_dropout=0"]
    assert main([*argv, "--out", str(tmp_path / "g1")]) == 0, capsys.readouterr().err
    info = json.loads((tmp_path / "g1" / "persons" / f"{pid}.json").read_text())["info"]
    folder = Path(info["adapter"])
    assert folder.is_relative_to(tmp_path / "cache") and "reused_adapter" not in info

    def boom():  # noqa: ANN202
        raise AssertionError("trained again")

    monkeypatch.setattr(dpo_mod, "dpo_trainer_class", boom)
    # a second run of the same configuration: the cached adapter, not a new training
    assert main([*argv, "--out", str(tmp_path / "g2")]) == 0, capsys.readouterr().err
    info2 = json.loads((tmp_path / "g2" / "persons" / f"{pid}.json").read_text())["info"]
    assert info2["reused_adapter"] and info2["adapter"] == str(folder)
    # --adapters DIR: another run's adapters folder (e.g. palign eval's OUT/adapters)
    shared = tmp_path / "eval-run" / "adapters"
    shared.mkdir(parents=True)
    (shared / pid).symlink_to(folder, target_is_directory=True)
    out3 = tmp_path / "g3"
    assert main([*argv, "--adapters", str(shared), "--out", str(out3)]) == 0
    info3 = json.loads((out3 / "persons" / f"{pid}.json").read_text())["info"]
    assert info3["reused_adapter"] and info3["adapter"] == str(shared / pid)
    # another configuration in that folder: refused, the adapter is not overwritten
    before = (folder / "adapter_model.safetensors").read_bytes()
    capsys.readouterr()
    other = [*argv[:-5], "2", "--train-batch", "2", "--train-option", "lora_dropout=0"]
    rc = main([*other, "--adapters", str(shared), "--out", str(tmp_path / "g4")])
    assert rc == 2
    assert "holds an adapter of another configuration (training)" in capsys.readouterr().err
    assert (folder / "adapter_model.safetensors").read_bytes() == before
