"""The evaluation worker: one model copy, set up once, evaluates whole person groups.

:class:`EvalWorker` is a plain class (usable and testable without Ray); the driver turns it
into a Ray actor with ``ray.remote``. It runs exactly the per-group code of a single-process
run (:func:`palign.eval.runs.eval_chunk`) with the same seeds, so a group's records are the
same bytes whichever worker computes them.

Shared setup work (the activation capture of PAS) is computed once: the first worker runs
:meth:`EvalWorker.setup` with ``export=True`` and returns the activation-cache entries it
used (``<sha256>.safetensors`` + ``.json``); the driver puts them in the object store and the
other workers write them into their own on-disk cache before their setup, which then reads
them instead of capturing again (also on other nodes, which do not share the disk).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from palign.data.types import Dataset, Person
    from palign.eval.runs import RunConfig
    from palign.methods.base import Method

ADAPTER_FILES = "_adapter_files"
"""Key of a person record that carries its LoRA adapter's files back to the driver (removed
by the driver before the record is written)."""


@contextmanager
def recording_activation_cache() -> Iterator[list[tuple[Path, bool]]]:
    """Record the activation-cache entries read or written inside the block.

    Yields a list that receives ``(folder/<sha256>, computed)`` for every
    :func:`palign.steering.capture.cached_activations` call made in the block (``computed``:
    the entry was missing, so this call ran the capture).
    """
    from palign.steering import capture

    used: list[tuple[Path, bool]] = []
    real = capture.cached_activations

    def recording(key_fields: Any, compute_fn: Any, cache_dir: Any = None) -> Any:
        calls = []

        def counted() -> Any:
            calls.append(1)
            return compute_fn()

        out = real(key_fields, counted, cache_dir)
        folder = Path(cache_dir) if cache_dir is not None else capture.activations_cache_dir()
        used.append((folder / capture.cache_key(key_fields), bool(calls)))
        return out

    capture.cached_activations = recording  # type: ignore[assignment]
    try:
        yield used
    finally:
        capture.cached_activations = real  # type: ignore[assignment]


def read_entries(stems: list[Path]) -> dict[str, bytes]:
    """The files of activation-cache entries, by file name."""
    out: dict[str, bytes] = {}
    for stem in stems:
        for suffix in (".safetensors", ".json"):
            p = stem.with_name(stem.name + suffix)
            if p.is_file():
                out[p.name] = p.read_bytes()
    return out


def write_entries(entries: dict[str, bytes], folder: Path | None = None) -> int:
    """Write shipped activation-cache files that this machine lacks; returns how many."""
    from palign.paths import atomic_write
    from palign.steering.capture import activations_cache_dir

    folder = folder or activations_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    # the tensor first, its JSON last: an entry is only complete once both exist
    for name in sorted(entries, key=lambda s: s.endswith(".json")):
        path = folder / name
        if path.is_file():
            continue

        def write(tmp: str, data: bytes = entries[name]) -> None:
            with open(tmp, "wb") as f:
                f.write(data)

        atomic_write(path, write)
        n += 1
    return n


class EvalWorker:
    """One model copy evaluating whole person groups of one run.

    Args:
        cfg: the run configuration (the same object the driver checked).
        dataset: the inventory (persons travel with each group, so a worker never holds the
            whole person list; a full-set run may select millions).
        method: the method instance before setup (None: built from ``cfg``).
        threads: torch threads of this worker (None: torch's default).
    """

    def __init__(
        self,
        cfg: RunConfig,
        dataset: Dataset,
        method: Method | None = None,
        threads: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.method = method
        self.threads = threads
        self.lm: Any = None
        self.state: dict[str, Any] = {}
        self.setup_error: BaseException | None = None
        self.ready = False

    def load(self) -> dict[str, Any]:
        """Load the model (once); returns the load time and where this worker runs."""
        import torch

        from palign.models.loading import load_model

        if self.threads:
            torch.set_num_threads(self.threads)
        t = time.perf_counter()
        if self.lm is None:
            c = self.cfg
            self.lm = load_model(
                c.model, device=c.device, dtype=c.dtype, load_in_4bit=c.load_in_4bit
            )
        return {
            "load_s": time.perf_counter() - t,
            "pid": os.getpid(),
            "host": os.uname().nodename,
            "device": str(self.lm.device),
            "threads": torch.get_num_threads(),
        }

    def setup(
        self, entries: dict[str, bytes] | None = None, export: bool = False
    ) -> dict[str, Any]:
        """Seed as a single process does and set the method up.

        Args:
            entries: activation-cache files computed by another worker (written first).
            export: return the activation-cache entries this setup used (the first worker).
        """
        import numpy as np
        import torch

        from palign.eval.runs import model_record
        from palign.methods import MethodConfig, get_method

        try:
            if self.lm is None:
                self.load()
            shipped = write_entries(entries) if entries else 0
            c = self.cfg
            if self.method is None:
                self.method = get_method(c.method, MethodConfig(c.semantics, c.seed, c.options))
            torch.manual_seed(c.seed)
            np.random.seed(c.seed)
            t = time.perf_counter()
            with recording_activation_cache() as used:
                self.method.setup(self.lm, self.dataset)
            self.ready = True
            return {
                "setup_s": time.perf_counter() - t,
                "model": model_record(c, self.lm),
                "entries": read_entries([stem for stem, _ in used]) if export else {},
                "shipped_entries": shipped,
                "captures": sum(computed for _, computed in used),
                "weights_fingerprint": getattr(self.lm, "weights_fingerprint", None),
            }
        except BaseException as e:
            self.setup_error = e
            raise

    def run_chunk(self, persons: list[Person]) -> list[dict[str, Any]]:
        """Align and evaluate one person group; the records a single process writes."""
        from palign.eval.runs import eval_chunk

        if not self.ready:
            if self.setup_error is not None:
                raise self.setup_error
            raise RuntimeError("EvalWorker.run_chunk called before setup")
        t = time.perf_counter()
        recs = eval_chunk(
            self.cfg,
            self.lm,
            self.dataset,
            self.method,  # type: ignore[arg-type]
            persons,
            _item_ids(self.cfg, self.dataset),
            self.state,
        )
        dt = (time.perf_counter() - t) / len(persons)
        out = [{"person": p.id, "seconds": round(dt, 3), **r} for p, r in zip(persons, recs)]
        for rec in out:
            # a trained LoRA adapter (dpo, grpo) lies on this worker's disk: its bytes travel
            # back with the group, and the driver writes them under the same path (a
            # multi-node cluster has no shared run folder)
            folder = (rec.get("info") or {}).get("adapter")
            if folder and Path(folder).is_dir():
                from palign.train.lora import adapter_files

                rec[ADAPTER_FILES] = adapter_files(folder)
        return out

    def pid(self) -> int:
        """This worker's process id (tests kill it)."""
        return os.getpid()


def _item_ids(cfg: RunConfig, dataset: Dataset) -> list[str]:
    from palign.eval.runs import test_items

    return test_items(dataset.inventory, cfg.max_items)
