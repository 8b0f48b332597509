"""User cache location shared by all layers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """palign's user cache: ``$PALIGN_CACHE``, else ``$XDG_CACHE_HOME/palign``, else ``~/.cache/palign``."""
    root = os.environ.get("PALIGN_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) / "palign" if xdg else Path.home() / ".cache" / "palign"
    return base.joinpath(*parts)
