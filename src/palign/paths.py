"""User cache location shared by all layers."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
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


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Create ``path`` through ``write(temporary name)`` + rename: never half-written.

    The file gets the usual permissions (0644 less the umask), not mkstemp's 0600.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
