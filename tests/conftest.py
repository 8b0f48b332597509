"""Shared fixtures: the PAPI/SD3 release folders from ../shared and a tiny hand-made data set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from palign.data.types import Dataset, Inventory, Item, Person
from palign.models.loading import LoadedModel

ROOT = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    env = os.environ.get("PALIGN_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "papi"


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster, and immune to a busy machine's oversubscription."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def papi_dir() -> Path:
    d = _shared()
    if not (d / "Test-set.json").is_file():
        pytest.skip(f"PAPI release files not found in {d} (set PALIGN_DATA)")
    return d


@pytest.fixture(scope="session")
def sd3_dir(papi_dir: Path) -> Path:
    d = papi_dir.parent / "sd3"
    if not (d / "data.csv").is_file():
        pytest.skip(f"SD3 data not found in {d}")
    return d


@pytest.fixture(scope="session")
def papi(papi_dir: Path) -> Dataset:
    from palign.data import load_dataset

    return load_dataset(papi_dir, "ipip-neo")


def tiny_inventory() -> Inventory:
    """Two traits: X (facets X1, X2) and Y (facet Y1); stored answers in trait direction."""
    spec = [
        ("1", "X1", 1, True),
        ("2", "X1", -1, True),
        ("3", "X1", 1, False),
        ("4", "X2", 1, True),
        ("5", "X2", -1, False),
        ("6", "Y1", 1, True),
        ("7", "Y1", -1, False),
    ]
    items = [
        Item(id=i, text=f"Do thing {i}.", trait=f[0], facet=f, facet_name=f"facet {f}", key=k)
        for i, f, k, _ in spec
    ]
    return Inventory(
        name="tiny",
        items=items,
        traits=["X", "Y"],
        trait_names={"X": "Ex", "Y": "Why"},
        shown_ids=[i for i, _, _, s in spec if s],
        test_ids=[i for i, _, _, s in spec if not s],
        stored="trait",
        statement_template="You {item}.",
    )


TINY_STORED = {
    "p1": {"1": 5, "2": 4, "3": 4, "4": 2, "5": 3, "6": 1, "7": 2},
    "p2": {"1": 1, "2": 2, "3": 0, "4": 4, "5": 5, "6": 3, "7": 4},
    "p3": {"1": 3, "2": 3, "3": 3, "4": 3, "5": 1, "6": 5, "7": 5},
}


@pytest.fixture
def tiny() -> Dataset:
    inv = tiny_inventory()
    return Dataset(inv, [Person(id=k, stored=dict(v)) for k, v in TINY_STORED.items()])


@pytest.fixture(scope="session")
def tiny_lm() -> LoadedModel:
    """A tiny random Llama with the real SmolLM2 tokenizer (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from palign.models.loading import load_model

    tok = load_model("smollm2").tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    return LoadedModel(
        model, tok, "tiny", "tiny-random-llama", None, torch.device("cpu"), torch.float32
    )


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, tiny_lm: LoadedModel) -> Path:
    """``tiny_lm`` saved as a model folder (config, safetensors, tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_lm.model.save_pretrained(folder)
    tiny_lm.tokenizer.save_pretrained(folder)
    return folder


# --- real tokenizers of three families (weights packages of `palign models` aliases) ---------
def real_tokenizer(alias: str):
    """The real tokenizer (and chat template) of a model alias, read once into the cache.

    Skips only when the alias's weights packages are not installed here (nor its verified GGUF
    in the cache); CI installs the packages (.ci/run: ./dev setup --models ...), so the tests
    run there. A corrupt package fails (PalignError), it is not skipped.
    """
    from palign.models.loading import assembled_path, is_verified, load_tokenizer, parts_status
    from palign.models.registry import get_entry

    entry = get_entry(alias)
    gguf = assembled_path(entry)
    ready = gguf.is_file() and is_verified(gguf, entry.sha256)
    missing = [s.part.dist for s in parts_status(entry) if s.path is None]
    if missing and not ready:
        pytest.skip(
            f"weights of {alias} not installed ({len(missing)} package(s), e.g. {missing[0]}); "
            f"./dev setup --models {alias}"
        )
    return load_tokenizer(alias)


@pytest.fixture(scope="session")
def llama_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (Llama architecture, ChatML template)."""
    return real_tokenizer("smollm2")


@pytest.fixture(scope="session")
def qwen2_tokenizer():
    """Qwen2.5-Coder-0.5B-Instruct's tokenizer and chat template (Qwen2 family)."""
    return real_tokenizer("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def gemma3_tokenizer():
    """Gemma-3-270M's tokenizer with Gemma 3's chat template (Gemma-3 family)."""
    return real_tokenizer("gemma3-270m")
