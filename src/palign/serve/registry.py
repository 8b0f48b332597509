"""The personalities a server knows: PAS adapters fitted for its base model, by name.

A personality (a PAS adapter, or a PEFT LoRA adapter of the training baselines) is served as
the model ``<base>:<name>`` (vLLM's multi-LoRA naming, where
``model`` selects the adapter); the bare ``<base>`` is the unsteered model. Adapters come
from folders at start (``palign serve --adapters DIR``: an adapter folder, or a folder of
adapter folders, each named by its folder) and at run time (``POST /v1/personalities``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from palign.chat import adapter_position
from palign.errors import PalignError
from palign.models.loading import LoadedModel
from palign.serve.lora import LoraAdapter, load_lora
from palign.steering.adapter import ADAPTER_CONFIG, PASAdapter, load_adapter

__all__ = ["NAME_RE", "Personality", "Registry", "adapter_kind"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class Personality:
    """One served person.

    Attributes:
        name: the personality name (model id ``<base>:<name>``).
        adapter: the PAS adapter (None for a LoRA personality).
        alpha: default steering strength (the adapter's fitted alpha; 0 for LoRA).
        position: default steering position: the one the adapter was fitted with (recorded
            ``steer_position``; ``"last"`` for adapters written before it was recorded), as
            ``palign chat`` does.
        system_prompt: system turn added to chats without one (the adapter's recorded one).
        created: unix time of registration.
    """

    name: str
    adapter: PASAdapter | None
    alpha: float
    position: str = "all"
    system_prompt: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    lora: LoraAdapter | None = None

    @property
    def kind(self) -> str:
        """``"pas"`` or ``"lora"``."""
        return "lora" if self.lora is not None else "pas"

    @property
    def path(self) -> Path | None:
        """The adapter folder."""
        return self.lora.path if self.lora is not None else (self.adapter and self.adapter.path)

    def u(self, alpha: float | None = None) -> torch.Tensor | None:
        """Steering vectors ``(n_layers, hidden)`` at ``alpha`` (default: the fitted one)."""
        if self.adapter is None:
            return None
        return self.adapter.u_at(self.alpha if alpha is None else alpha)

    def info(self) -> dict[str, Any]:
        """A JSON summary (for ``GET /v1/models``)."""
        if self.lora is not None:
            meta = _lora_meta(self.lora.path)
            return {
                "kind": "lora",
                "person": meta.get("person"),
                "method": meta.get("method"),
                "rank": self.lora.rank,
                "modules": len(self.lora.layers),
                "path": str(self.lora.path),
            }
        assert self.adapter is not None
        cfg = self.adapter.config
        return {
            "kind": "pas",
            "person": cfg.get("person"),
            "method": (cfg.get("extra") or {}).get("method", cfg.get("method")),
            "alpha": self.alpha,
            "steer_position": self.position,
            "heads": len(cfg.get("heads", [])),
            "inventory": cfg.get("inventory"),
            "path": str(self.adapter.path) if self.adapter.path else None,
        }


def _lora_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "palign_train.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def adapter_kind(folder: Path) -> str:
    """``"pas"``, ``"peft"`` or ``"unknown"``, from the folder's ``adapter_config.json``."""
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "unknown"
    if not isinstance(cfg, dict):
        return "unknown"
    if cfg.get("kind") == "palign-pas-adapter":
        return "pas"
    if "peft_type" in cfg:
        return "peft"
    return "unknown"


class Registry:
    """Thread-safe name -> :class:`Personality` map for one base model.

    Args:
        lm: the served base model (adapters are checked against it when registered).
        force: accept adapters recorded for another model id/revision of the same shape.
    """

    def __init__(self, lm: LoadedModel, force: bool = False) -> None:
        self.lm = lm
        self.force = force
        self._items: dict[str, Personality] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        with self._lock:
            return sorted(self._items)

    def get(self, name: str) -> Personality | None:
        """The personality called ``name``, or None."""
        with self._lock:
            return self._items.get(name)

    def items(self) -> list[Personality]:
        """All personalities, by name."""
        with self._lock:
            return [self._items[k] for k in sorted(self._items)]

    def load(
        self, folder: str | Path, name: str | None = None, replace: bool = False
    ) -> Personality:
        """Load the adapter folder ``folder`` and register it as ``name`` (default: folder name).

        PAS adapters and PEFT LoRA adapters (the training baselines') are accepted.

        Raises:
            PalignError: bad name, existing name (unless ``replace``), not an adapter palign
                can serve, or fitted for another model.
        """
        folder = Path(folder)
        name = name or folder.name
        if not NAME_RE.match(name):
            raise PalignError(
                f"personality name {name!r} is not allowed; use letters, digits, '.', '_' or "
                "'-' (at most 64, starting with a letter or digit)"
            )
        if adapter_kind(folder) == "peft":
            lora = load_lora(folder, self.lm.model)
            meta = _lora_meta(folder)
            base = (
                (meta.get("base_model") or {}) if isinstance(meta.get("base_model"), dict) else {}
            )
            want = base.get("id") or meta.get("model_id")
            if want and self.lm.model_id and want != self.lm.model_id and not self.force:
                raise PalignError(
                    f"LoRA adapter {folder} was trained on {want} but the served model is "
                    f"{self.lm.model_id}; serve that model, or pass --force"
                )
            pl = Personality(name=name, adapter=None, alpha=0.0, lora=lora)
            with self._lock:
                if name in self._items and not replace:
                    raise PalignError(
                        f"personality {name!r} exists; delete it first or pass replace"
                    )
                self._items[name] = pl
            return pl
        adapter = load_adapter(folder, self.lm, force=self.force)
        cfg = adapter.config
        position = adapter_position(adapter)  # as palign chat: the one alpha was chosen with
        extra = cfg.get("extra") or {}
        p = Personality(
            name=name,
            adapter=adapter,
            alpha=float(adapter.alpha),
            position=position,
            system_prompt=extra.get("system_prompt") if isinstance(extra, dict) else None,
        )
        with self._lock:
            if name in self._items and not replace:
                raise PalignError(f"personality {name!r} exists; delete it first or pass replace")
            self._items[name] = p
        return p

    def check(self, folder: str | Path) -> None:
        """Load ``folder`` as :meth:`load` would, without registering it (errors alike)."""
        folder = Path(folder)
        if adapter_kind(folder) == "peft":
            load_lora(folder, self.lm.model)
        else:
            load_adapter(folder, self.lm, force=self.force)

    def load_dir(self, path: str | Path) -> list[Personality]:
        """Register ``path`` (an adapter folder) or every adapter folder inside it.

        Subfolders without ``adapter_config.json`` are skipped; an adapter that cannot be
        served is an error naming the folder.
        """
        path = Path(path)
        if not path.is_dir():
            raise PalignError(f"adapters folder {path} does not exist; give a folder of adapters")
        if (path / ADAPTER_CONFIG).is_file():
            return [self.load(path)]
        out = []
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            if (sub / ADAPTER_CONFIG).is_file():
                out.append(self.load(sub))
        return out

    def remove(self, name: str) -> bool:
        """Forget ``name`` (requests already running keep their vectors); False if unknown."""
        with self._lock:
            return self._items.pop(name, None) is not None
