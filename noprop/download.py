"""Files that verify themselves: checksummed downloads that resume, retry and are never used
unverified, and tar extraction that refuses anything that would leave its folder.

A download goes to ``<file>.part`` beside its target. A later attempt resumes it with an HTTP Range
request (or starts over when the server ignores the range); only once the whole file's size and
digest match the official ones is it renamed to its final name. ``--offline`` or NOPROP_OFFLINE=1
forbids downloading altogether.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import DataError


@dataclass(frozen=True)
class RemoteFile:
    name: str
    digest: str            # hex digest of the official file
    size: int | None = None
    algo: str = "sha256"   # sha256, or md5 where only that is published


def offline() -> bool:
    return os.environ.get("NOPROP_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def digest_of(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, spec: RemoteFile) -> None:
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise DataError(f"{path}: {size} bytes, expected {spec.size} (truncated or not the official "
                        f"file); delete it and supply the official {spec.name}, or pass --download")
    digest = digest_of(path, spec.algo)
    if digest != spec.digest:
        raise DataError(f"{path}: {spec.algo} {digest} does not match the official {spec.digest}; "
                        f"the file is corrupt or tampered with: delete it and supply the official copy")


def _fetch_once(url: str, part: Path, timeout: float, progress) -> None:
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the range starts at the end: the part file is already whole
            return
        raise
    with resp:
        resumed = have and resp.status == 206
        mode = "ab" if resumed else "wb"
        if not resumed:
            have = 0
        progress.reset(total=progress.total)
        progress.update(have)
        with open(part, mode) as out:
            for block in iter(lambda: resp.read(1 << 16), b""):
                out.write(block)
                progress.update(len(block))


def download(urls: list[str], dest: Path, spec: RemoteFile, retries: int = 3, timeout: float = 30.0,
             backoff: float = 1.0) -> None:
    """Fetch spec into dest from the first URL that serves it whole and verified."""
    from tqdm import tqdm

    if offline():
        raise DataError(f"{dest.name} is needed but downloads are forbidden (--offline / NOPROP_OFFLINE); "
                        f"place the official file at {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = []
    with tqdm(total=spec.size, unit="B", unit_scale=True, desc=spec.name, leave=False, disable=None) as bar:
        for url in urls:
            for attempt in range(retries):
                try:
                    _fetch_once(url, part, timeout, bar)
                    if spec.size is not None and part.stat().st_size < spec.size:
                        raise DataError(f"{url}: the transfer ended at {part.stat().st_size} of {spec.size} bytes")
                    verify_file(part, spec)
                    os.replace(part, dest)
                    return
                except DataError as e:
                    errors.append(f"{url}: {e}")
                    # a whole but wrong file will not get better by resuming it
                    if part.exists() and (spec.size is None or part.stat().st_size >= spec.size):
                        part.unlink()
                except (OSError, urllib.error.URLError) as e:
                    errors.append(f"{url}: {e}")
                time.sleep(backoff * attempt)
    raise DataError(f"could not download {spec.name} from any mirror:\n  " + "\n  ".join(errors))


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into dest, refusing absolute paths, '..', links and special files:
    an archive may only create regular files and folders inside dest."""
    dest = dest.resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts:
                    raise DataError(f"{archive}: refuses member {m.name!r}, whose path leaves the target folder")
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: refuses member {m.name!r}: links and special files are not "
                                    "extracted")
                if not (dest / m.name).resolve().is_relative_to(dest):
                    raise DataError(f"{archive}: refuses member {m.name!r}, whose path leaves the target folder")
            for m in members:
                tar.extract(m, dest, set_attrs=False, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except tarfile.TarError as e:
        raise DataError(f"{archive}: not a readable tar archive ({e}); delete it and download it again") from e
