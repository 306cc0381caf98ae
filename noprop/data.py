"""Datasets, held as normalised tensors in memory (no per-sample Python in the training loop).

Datasets:
- ``mnist``, ``fashion-mnist``, ``kmnist``: the four official IDX ``.gz`` files each;
- ``cifar10``, ``cifar100``: the official python-pickle tarballs (or their extracted folders),
  read with an unpickler that admits nothing but numpy arrays and plain containers;
- a path ending in ``.npz``: the user's own data, arrays x_train, y_train, x_test, y_test.

Files are looked for, in order, in ``--data-dir``, ``$NOPROP_DATA`` and (MNIST) the copy this package
carries, each as ``<root>/<name>/`` or ``<root>/``, and verified (size, checksum, format) before use.
With downloads allowed and no copy found, they are fetched from the official mirrors
(noprop.download: resumable, retried, verified before they are renamed into place).

Pixels are scaled to [0, 1] and normalised per channel with the training set's mean and std.

A seeded validation split is held out of the training images for every selection (best epoch,
early stop, tuning); the test split only ever yields the reported test accuracy.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .download import DataError, RemoteFile, digest_of, download, safe_extract, verify_file
from .errors import ConfigError

BUNDLED = Path(__file__).parent / "_bundled"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _idx_files(digests: dict[str, str], sizes: dict[str, int] | None = None, algo="sha256"):
    names = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
             "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
    return {k: RemoteFile(names[k], digests[k], (sizes or {}).get(k), algo) for k in names}


MNIST_FILES = _idx_files(
    {"train_images": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
     "train_labels": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
     "test_images": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
     "test_labels": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"},
    {"train_images": 9912422, "train_labels": 28881, "test_images": 1648877, "test_labels": 4542})
# Fashion-MNIST and KMNIST publish md5 sums only (as used by torchvision)
FASHION_FILES = _idx_files(
    {"train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
     "test_images": "bef4ecab320f06d8554ea6380940ec79", "test_labels": "bb300cfdad3c16e7a12a480ee83cd310"},
    {"train_images": 26421880, "train_labels": 29515, "test_images": 4422102, "test_labels": 5148}, "md5")
KMNIST_FILES = _idx_files(
    {"train_images": "bdb82020997e1d708af4cf47b453dcf7", "train_labels": "e144d726b3acfaa3e44228e80efcd344",
     "test_images": "5c965bf0a639b31b8f53240b1b52f4d7", "test_labels": "7320c461ea6c1c855c0b718fb2a4b134"},
    None, "md5")
IDX_DATASETS = {
    "mnist": (MNIST_FILES, ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                            "https://storage.googleapis.com/cvdf-datasets/mnist/")),
    "fashion-mnist": (FASHION_FILES, ("https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                                      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")),
    "kmnist": (KMNIST_FILES, ("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",)),
}

CIFAR = {  # name -> (tarball, folder inside it, train members, test member, label key, classes)
    "cifar10": (RemoteFile("cifar-10-python.tar.gz",
                           "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071),
                "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10),
    "cifar100": (RemoteFile("cifar-100-python.tar.gz",
                            "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", 169001437),
                 "cifar-100-python", ["train"], "test", b"fine_labels", 100),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


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
# Formats
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


class _ArraysOnly(pickle.Unpickler):
    """The CIFAR batches are pickles; this unpickler admits numpy arrays and plain containers only,
    so a tampered file cannot run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refuses {module}.{name}: only numpy arrays may be loaded")


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data, labels = np.asarray(d[b"data"], dtype=np.uint8), np.asarray(d[label_key], dtype=np.int64)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from e
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not an official CIFAR batch ({e}); delete it and extract the official "
                        "tarball again") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{path}: data of shape {data.shape} with {len(labels)} labels; expected [N, 3072]")
    return data.reshape(-1, 3, 32, 32), labels


# --------------------------------------------------------------------------------------------
# Finding and fetching files
def candidate_dirs(name: str, data_dir: str | os.PathLike | None, bundled: bool = False) -> list[Path]:
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
    if bundled:
        out.append(BUNDLED / name)
    return out


def download_root(name: str, data_dir) -> Path:
    return Path(data_dir or os.environ.get("NOPROP_DATA") or Path.home() / ".cache" / "noprop") / name


def locate_files(name: str, files: dict[str, RemoteFile], data_dir=None, allow_download=False,
                 mirrors=(), bundled: bool = False) -> tuple[Path, dict[str, Path]]:
    looked = []
    for d in candidate_dirs(name, data_dir, bundled):
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
            try:
                verify_file(p, files[k])
            except DataError:
                other = identify_idx_file(p)
                if other is not None and other != name:
                    raise DataError(f"{p}: this is the official {other} file {p.name}, not {name}'s (a valid "
                                    f"file of another dataset; nothing is wrong with it). Point --data-dir at a "
                                    f"folder holding the {name} files (noprop looks in DIR/{name}/ before DIR/), "
                                    f"or train on it with --dataset {other}") from None
                raise
        return d, paths
    if allow_download:
        target = download_root(name, data_dir)
        for f in files.values():
            if not (target / f.name).exists():
                download([m + f.name for m in mirrors], target / f.name, f)
        return target, {k: target / f.name for k, f in files.items()}
    raise DataError(f"{name} files not found{_looked(looked)}. Pass --data-dir DIR holding "
                    f"{', '.join(f.name for f in files.values())}, set NOPROP_DATA, or allow --download")


def _looked(folders: list[str]) -> str:
    return f" (looked in {', '.join(folders)})" if folders else " (no folder to look in was given)"


def identify_idx_file(path: Path) -> str | None:
    """The dataset whose official file `path` is (by name, size and checksum), or None."""
    size, digests = path.stat().st_size, {}
    for dataset, (files, _) in IDX_DATASETS.items():
        for spec in files.values():
            if spec.name != path.name or (spec.size is not None and spec.size != size):
                continue
            if spec.algo not in digests:
                digests[spec.algo] = digest_of(path, spec.algo)
            if digests[spec.algo] == spec.digest:
                return dataset
    return None


# --------------------------------------------------------------------------------------------
def split_validation(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int, in_place: bool = False):
    """Seeded hold-out of val_size examples from the training set. in_place: the training rows are
    moved to the front of x itself (which the caller gives up) instead of copied, so the largest
    array of the data is never held twice. Safe because the training indices ascend with
    train[j] >= j: the rows still to be read always lie beyond the ones being written."""
    if not 0 <= val_size < len(y):
        raise ValueError(f"--val-size must be in [0, {len(y)}), got {val_size}")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:val_size].sort().values, perm[val_size:].sort().values
    held_out = Split(x[val], y[val])
    if not in_place:
        return Split(x[train], y[train]), held_out
    chunk = 4096
    for i in range(0, len(train), chunk):
        rows = train[i:i + chunk]
        x[i:i + len(rows)] = x[rows]
    return Split(x[:len(train)], y[train]), held_out


def make_dataset(name: str, source: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, num_classes: int, val_size: int, split_seed: int,
                 mean_std: tuple | None = None) -> Dataset:
    """uint8 or float [N, C, H, W] arrays -> normalised tensors, with the validation hold-out.
    Normalisation is per channel, with the whole training set's statistics unless given."""
    # Every rank of a parallel run loads the data, so the peak memory of this matters: one float32
    # copy of each array (IDX arrays are read-only views of the file's bytes), scaled and
    # normalised in place, and the validation split made in place (split_validation).
    def scaled(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(a, dtype=np.float32))
        return t.div_(255) if a.dtype == np.uint8 else t
    xtr, xte = scaled(x_train), scaled(x_test)
    if mean_std is None:
        mean, std = xtr.mean(dim=(0, 2, 3)), xtr.std(dim=(0, 2, 3)).clamp(min=1e-6)
    else:
        mean, std = (torch.tensor(v, dtype=torch.float32).reshape(-1) for v in mean_std)
    norm = lambda t: t.sub_(mean[None, :, None, None]).div_(std[None, :, None, None])  # noqa: E731
    train, val = split_validation(norm(xtr), torch.from_numpy(y_train.astype(np.int64)), val_size, split_seed,
                                  in_place=True)
    test = Split(norm(xte), torch.from_numpy(y_test.astype(np.int64)))
    return Dataset(name, train, val, test, num_classes, source)


def load_idx_dataset(name: str, data_dir=None, allow_download=False, val_size=5000, split_seed=0,
                     mirrors=None) -> Dataset:
    files, default_mirrors = IDX_DATASETS[name]
    where, paths = locate_files(name, files, data_dir, allow_download, mirrors or default_mirrors,
                                bundled=name == "mnist")
    arrays = {k: read_idx(p, 3 if k.endswith("images") else 1) for k, p in paths.items()}
    for part in ("train", "test"):
        xi, yi = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if len(xi) != len(yi):
            raise DataError(f"{paths[part + '_images']}: {len(xi)} images but "
                            f"{paths[part + '_labels']} has {len(yi)} labels")
        if yi.max() > 9:
            raise DataError(f"{paths[part + '_labels']}: label {yi.max()} out of range 0..9")
    # MNIST keeps its customary constants (equal to the training statistics to 4 digits)
    stats = (MNIST_MEAN, MNIST_STD) if name == "mnist" else None
    return make_dataset(name, str(where), arrays["train_images"][:, None], arrays["train_labels"],
                        arrays["test_images"][:, None], arrays["test_labels"], 10, val_size, split_seed, stats)


def load_mnist(data_dir=None, allow_download=False, val_size=5000, split_seed=0, mirrors=None) -> Dataset:
    return load_idx_dataset("mnist", data_dir, allow_download, val_size, split_seed, mirrors)


def load_cifar(name: str, data_dir=None, allow_download=False, val_size=5000, split_seed=0,
               mirrors=None) -> Dataset:
    tarball, folder, train_members, test_member, label_key, m = CIFAR[name]
    looked, where = [], None
    for d in candidate_dirs(name, data_dir):
        if (d / folder).is_dir():
            where = d / folder
            break
        if (d / tarball.name).exists():
            verify_file(d / tarball.name, tarball)
            safe_extract(d / tarball.name, d)
            where = d / folder
            break
        looked.append(str(d))
    if where is None:
        if not allow_download:
            raise DataError(f"{name} not found{_looked(looked)}: noprop needs {folder}/ or {tarball.name}. "
                            "Pass --data-dir DIR holding either, set NOPROP_DATA, or allow --download")
        target = download_root(name, data_dir)
        download([u + tarball.name for u in (mirrors or (CIFAR_URL,))], target / tarball.name, tarball)
        safe_extract(target / tarball.name, target)
        where = target / folder
    for member in train_members + [test_member]:
        if not (where / member).exists():
            raise DataError(f"{where}: lacks {member}; extract the official {tarball.name} again")
    parts = [read_cifar_batch(where / b, label_key) for b in train_members]
    x_train, y_train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    x_test, y_test = read_cifar_batch(where / test_member, label_key)
    for path, y in ((where / train_members[-1], y_train), (where / test_member, y_test)):
        if y.min() < 0 or y.max() >= m:
            raise DataError(f"{path}: label {int(y.max())} out of range 0..{m - 1}")
    return make_dataset(name, str(where), x_train, y_train, x_test, y_test, m, val_size, split_seed)


def load_npz(path: str | os.PathLike, val_size=5000, split_seed=0, **_) -> Dataset:
    """A user's own data: x_train, y_train, x_test, y_test. Images [N, H, W] (one channel),
    [N, H, W, C] or [N, C, H, W] with C in 1..4; uint8 (0..255) or floats; integer labels 0..K-1."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test") if k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from e
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays)
    if missing:
        raise DataError(f"{path}: lacks {', '.join(sorted(missing))}; it needs x_train, y_train, x_test, y_test")
    xs = {}
    for k in ("x_train", "x_test"):
        x = arrays[k]
        if not (np.issubdtype(x.dtype, np.floating) or x.dtype == np.uint8):
            raise DataError(f"{path}: {k} has dtype {x.dtype}; use uint8 (0..255) or floats")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise DataError(f"{path}: {k} holds NaN or inf values")
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[-1] <= 4 < x.shape[1]:
            x = x.transpose(0, 3, 1, 2)
        elif not (x.ndim == 4 and x.shape[1] <= 4):
            raise DataError(f"{path}: {k} has shape {x.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W]")
        xs[k] = x
    if xs["x_train"].shape[1:] != xs["x_test"].shape[1:]:
        raise DataError(f"{path}: x_train images {xs['x_train'].shape[1:]} differ from x_test's "
                        f"{xs['x_test'].shape[1:]}")
    for xk, yk in (("x_train", "y_train"), ("x_test", "y_test")):
        y = arrays[yk]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: {yk} must be a vector of integer labels, got {y.dtype} {y.shape}")
        if len(y) != len(xs[xk]):
            raise DataError(f"{path}: {len(xs[xk])} images in {xk} but {len(y)} labels in {yk}")
    m = int(arrays["y_train"].max()) + 1
    for yk in ("y_train", "y_test"):
        y = arrays[yk]
        if y.min() < 0 or y.max() >= m:
            raise DataError(f"{path}: {yk} has labels out of range 0..{m - 1} (classes are 0..max(y_train))")
    return make_dataset(path.stem, str(path), xs["x_train"], arrays["y_train"], xs["x_test"], arrays["y_test"],
                        m, val_size, split_seed)


DATASETS = {"mnist": load_mnist,
            "fashion-mnist": lambda **kw: load_idx_dataset("fashion-mnist", **kw),
            "kmnist": lambda **kw: load_idx_dataset("kmnist", **kw),
            "cifar10": lambda **kw: load_cifar("cifar10", **kw),
            "cifar100": lambda **kw: load_cifar("cifar100", **kw)}


def is_npz(name: str) -> bool:
    return str(name).endswith(".npz")


def load_dataset(name: str, **kwargs) -> Dataset:
    if is_npz(name):
        return load_npz(name, **kwargs)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or a .npz file")
    return DATASETS[name](**kwargs)


def subset(split: Split, n: int | None, seed: int = 0) -> Split:
    """A seeded random subset of n examples (all when n is None)."""
    if n is None or n >= len(split):
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Split(split.x[idx], split.y[idx])


def augment(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding, and a random horizontal flip, per image (global RNG)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


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


def load_data(cfg, data_dir=None, allow_download=False) -> Dataset:
    """The dataset a Config trains on: its validation split (seeded by cfg.seed) and subsets."""
    data = load_dataset(cfg.dataset, data_dir=data_dir, allow_download=allow_download,
                        val_size=cfg.val_size, split_seed=cfg.seed)
    data.train = subset(data.train, cfg.train_subset, cfg.seed)
    data.val = subset(data.val, cfg.val_subset, cfg.seed)
    data.test = subset(data.test, cfg.test_subset, 0)  # the same images whatever the seed
    if cfg.batch_size > len(data.train):
        raise ConfigError(f"--batch-size: {cfg.batch_size} is larger than the {len(data.train)} "
                          "training images; lower it or use more data")
    return data
