"""Datasets, held as normalised tensors in memory (no per-sample Python in the training loop).

MNIST comes from the four official IDX ``.gz`` files. They are looked for, in order, in
``--data-dir``, ``$NOPROP_DATA`` and the copy this package carries, and each file is verified
(size, sha256, IDX magic and dimensions) before use. With downloads allowed and no copy found, the
files are fetched from the official mirrors, verified, and only then moved into place.

A seeded validation split is held out of the training images for every selection (best epoch,
early stop, tuning); the test split only ever yields the reported test accuracy.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

BUNDLED = Path(__file__).parent / "_bundled"


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or not what it claims to be. The message names the file
    and says what to do."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    sha256: str
    size: int


MNIST_FILES = {
    "train_images": RemoteFile("train-images-idx3-ubyte.gz",
                               "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
    "train_labels": RemoteFile("train-labels-idx1-ubyte.gz",
                               "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
    "test_images": RemoteFile("t10k-images-idx3-ubyte.gz",
                              "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
    "test_labels": RemoteFile("t10k-labels-idx1-ubyte.gz",
                              "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclass
class Split:
    x: torch.Tensor  # float32 [N, C, H, W], normalised
    y: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    source: str  # where the files were read from

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])


# --------------------------------------------------------------------------------------------
# Verification and IDX parsing
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, spec: RemoteFile) -> None:
    size = path.stat().st_size
    if size != spec.size:
        raise DataError(f"{path}: {size} bytes, expected {spec.size} (truncated or not the official "
                        f"file); delete it and supply the official {spec.name}, or pass --download")
    digest = sha256_of(path)
    if digest != spec.sha256:
        raise DataError(f"{path}: sha256 {digest} does not match the official {spec.sha256}; "
                        f"the file is corrupt or tampered with: delete it and supply the official copy")


def read_idx(path: Path, expect_ndim: int) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes (magic 0x0000 08 ndim)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}); re-download it") from e
    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an IDX file")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim != expect_ndim:
        raise DataError(f"{path}: IDX magic {raw[:4].hex()} is not an unsigned-byte IDX file with "
                        f"{expect_ndim} dimension(s) (expected 000008{expect_ndim:02x})")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but the file holds "
                        f"{len(body)} bytes of data")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


# --------------------------------------------------------------------------------------------
# Finding and fetching files
def candidate_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Where to look, in order: --data-dir, $NOPROP_DATA, the bundled copy. Each root is tried
    as ``root/<name>/`` and as ``root/`` itself."""
    roots = []
    if data_dir:
        roots.append(Path(data_dir))
    if os.environ.get("NOPROP_DATA"):
        roots.append(Path(os.environ["NOPROP_DATA"]))
    out = []
    for r in roots:
        out += [r / name, r]
    out.append(BUNDLED / name)
    return out


def download(url: str, dest: Path, spec: RemoteFile, timeout: float = 30.0) -> None:
    """Fetch url into dest through a temporary file; dest appears only once verified."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp, \
                tqdm(total=spec.size, unit="B", unit_scale=True, desc=spec.name, leave=False) as bar:
            for block in iter(lambda: resp.read(1 << 16), b""):
                out.write(block)
                bar.update(len(block))
        verify_file(Path(tmp), spec)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def locate_files(name: str, files: dict[str, RemoteFile], data_dir=None, allow_download=False,
                 mirrors=()) -> tuple[Path, dict[str, Path]]:
    looked = []
    for d in candidate_dirs(name, data_dir):
        paths = {k: d / f.name for k, f in files.items()}
        present = [p for p in paths.values() if p.exists()]
        if not present:
            looked.append(str(d))
            continue
        if len(present) < len(paths):
            missing = [p.name for p in paths.values() if not p.exists()]
            raise DataError(f"{d}: holds some {name} files but lacks {', '.join(missing)}; "
                            "add them or remove the partial copy")
        for k, p in paths.items():
            verify_file(p, files[k])
        return d, paths
    if allow_download:
        root = Path(data_dir or os.environ.get("NOPROP_DATA") or Path.home() / ".cache" / "noprop")
        target = root / name
        errors = []
        for k, f in files.items():
            for m in mirrors:
                try:
                    download(m + f.name, target / f.name, f)
                    break
                except (OSError, DataError) as e:
                    errors.append(f"{m}{f.name}: {e}")
            else:
                raise DataError(f"could not download {f.name} from any mirror:\n  " + "\n  ".join(errors))
        return target, {k: target / f.name for k, f in files.items()}
    raise DataError(f"{name} files not found. Looked in: {', '.join(looked)}. Pass --data-dir DIR "
                    f"holding {', '.join(f.name for f in files.values())}, set NOPROP_DATA, or "
                    "allow --download")


# --------------------------------------------------------------------------------------------
def split_validation(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int):
    """Seeded hold-out of val_size examples from the training set."""
    if not 0 <= val_size < len(y):
        raise ValueError(f"--val-size must be in [0, {len(y)}), got {val_size}")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:val_size].sort().values, perm[val_size:].sort().values
    return Split(x[train], y[train]), Split(x[val], y[val])


def load_mnist(data_dir=None, allow_download=False, val_size=5000, split_seed=0,
               mirrors=MNIST_MIRRORS) -> Dataset:
    where, paths = locate_files("mnist", MNIST_FILES, data_dir, allow_download, mirrors)
    arrays = {k: read_idx(p, 3 if k.endswith("images") else 1) for k, p in paths.items()}
    for part in ("train", "test"):
        xi, yi = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if len(xi) != len(yi):
            raise DataError(f"{paths[part + '_images']}: {len(xi)} images but "
                            f"{paths[part + '_labels']} has {len(yi)} labels")
        if yi.max() > 9:
            raise DataError(f"{paths[part + '_labels']}: label {yi.max()} out of range 0..9")

    def to_tensor(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images.copy()).float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD)
        return x.unsqueeze(1)

    xtr, ytr = to_tensor(arrays["train_images"]), torch.from_numpy(arrays["train_labels"].astype(np.int64))
    train, val = split_validation(xtr, ytr, val_size, split_seed)
    test = Split(to_tensor(arrays["test_images"]), torch.from_numpy(arrays["test_labels"].astype(np.int64)))
    return Dataset("mnist", train, val, test, 10, str(where))


DATASETS = {"mnist": load_mnist}


def load_dataset(name: str, **kwargs) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](**kwargs)


def subset(split: Split, n: int | None, seed: int = 0) -> Split:
    """A seeded random subset of n examples (all when n is None)."""
    if n is None or n >= len(split):
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Split(split.x[idx], split.y[idx])


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None,
            drop_last: bool = False):
    """Yield (x, y) minibatches; shuffled when a generator is given. Training drops the last
    partial batch so BatchNorm never sees a batch of one."""
    n = len(split)
    if batch_size > n:
        raise ValueError(f"--batch-size {batch_size} is larger than the {n} examples available")
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield split.x[idx], split.y[idx]
