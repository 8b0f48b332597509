"""``palign data fetch``: download the public release files into the user cache, verified."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from palign.data.sources import FILES, RemoteFile
from palign.errors import PalignError
from palign.paths import atomic_write, cache_dir

SUBDIR = {"ipip-neo": "papi", "sd3": "sd3"}


def default_data_dir(inventory: str = "ipip-neo") -> Path:
    """The cache folder that ``palign data fetch`` fills for ``inventory``."""
    return cache_dir("data", SUBDIR[inventory])


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(folder: Path, files: tuple[RemoteFile, ...]) -> list[str]:
    """Names of the files in ``folder`` whose checksum is wrong or which are missing."""
    bad = []
    for rf in files:
        p = folder / rf.name
        if not p.is_file() or sha256_file(p) != rf.sha256:
            bad.append(rf.name)
    return bad


def _download(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (fixed https URLs)
        return r.read()


def fetch(
    inventory: str = "ipip-neo",
    dest: Path | None = None,
    *,
    timeout: float = 60.0,
    downloader: Callable[[str, float], bytes] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Path:
    """Download the release files of ``inventory`` into ``dest`` (default: the user cache).

    Each file is verified against its published sha256 before it is moved into place, so a
    failed or tampered download leaves nothing behind. Files already present and correct are
    kept. Returns the folder.
    """
    if inventory not in FILES:
        raise PalignError(f"unknown inventory {inventory!r}; use one of: {', '.join(FILES)}")
    download = downloader or _download
    dest = Path(dest) if dest else default_data_dir(inventory)
    dest.mkdir(parents=True, exist_ok=True)
    for rf in FILES[inventory]:
        target = dest / rf.name
        if target.is_file() and sha256_file(target) == rf.sha256:
            log(f"ok       {rf.name} (already present)")
            continue
        try:
            data = download(rf.url, timeout)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise PalignError(
                f"cannot download {rf.name} from {rf.url} ({reason}); check the network, or "
                f"copy the release files into a folder and pass --data DIR (or set PALIGN_DATA)"
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != rf.sha256:
            raise PalignError(
                f"checksum mismatch for {rf.name} (got {digest[:12]}..., expected "
                f"{rf.sha256[:12]}...); the download is corrupt or changed upstream: retry, or "
                f"pass --data DIR with verified files"
            )
        atomic_write(target, lambda tmp, data=data: Path(tmp).write_bytes(data))
        log(f"fetched  {rf.name} ({len(data):,} bytes, sha256 ok)")
    return dest
