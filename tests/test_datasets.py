"""CIFAR-10/100, Fashion-MNIST/KMNIST and user .npz files, on small files made here in the official
formats; downloads from a local server (truncated, resumed, wrong checksum); hostile archives."""

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from noprop import data as D
from noprop.download import DataError, RemoteFile, download, safe_extract


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("NOPROP_DATA", raising=False)
    monkeypatch.delenv("NOPROP_OFFLINE", raising=False)


def cifar_batch(n, classes, label_key, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"test", label_key: rng.integers(0, classes, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}


def make_cifar_tarball(tmp: Path, name: str, n=40) -> Path:
    """A small tarball in the official layout (pickled dicts with bytes keys, protocol 2)."""
    if name == "cifar10":
        members = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        folder, key, m = "cifar-10-batches-py", b"labels", 10
    else:
        folder, members, key, m = "cifar-100-python", ["train", "test"], b"fine_labels", 100
    src = tmp / "src"
    (src / folder).mkdir(parents=True)
    for i, mem in enumerate(members):
        (src / folder / mem).write_bytes(pickle.dumps(cifar_batch(n, m, key, i), protocol=2))
    tar_path = tmp / ("cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(src / folder, arcname=folder)
    return tar_path


def official_like(monkeypatch, name, tar_path):
    """Point the loader's expected checksum at our small tarball (the real one is 170 MB)."""
    tb, *rest = D.CIFAR[name]
    spec = RemoteFile(tb.name, hashlib.sha256(tar_path.read_bytes()).hexdigest(), tar_path.stat().st_size)
    monkeypatch.setitem(D.CIFAR, name, (spec, *rest))


@pytest.mark.parametrize("name,m,n_train", [("cifar10", 10, 200), ("cifar100", 100, 40)])
def test_cifar_from_tarball_in_data_dir(tmp_path, monkeypatch, name, m, n_train):
    tar_path = make_cifar_tarball(tmp_path, name)
    official_like(monkeypatch, name, tar_path)
    d = D.load_dataset(name, data_dir=tmp_path, val_size=10)
    assert d.image_shape == (3, 32, 32) and d.num_classes == m
    assert len(d.train) + len(d.val) == n_train and len(d.test) == 40
    torch.testing.assert_close(torch.cat([d.train.x, d.val.x]).mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    # the first pixel of image 0 is channel R, row 0, col 0 of the official row layout
    raw = pickle.loads((Path(d.source) / ("test_batch" if name == "cifar10" else "test")).read_bytes())
    assert d.test.y[0].item() == raw[b"labels" if name == "cifar10" else b"fine_labels"][0]
    # a second load uses the extracted folder
    assert D.load_dataset(name, data_dir=tmp_path, val_size=10).source == d.source


def test_cifar_download_from_local_server(tmp_path, monkeypatch, range_server):
    tar_path = make_cifar_tarball(tmp_path / "srv", "cifar10") if (tmp_path / "srv").mkdir() is None else None
    official_like(monkeypatch, "cifar10", tar_path)
    url, _ = range_server(tar_path.parent)
    d = D.load_cifar("cifar10", data_dir=tmp_path / "dl", allow_download=True, val_size=10, mirrors=(url,))
    assert d.source == str(tmp_path / "dl" / "cifar10" / "cifar-10-batches-py")
    with pytest.raises(DataError, match="not found.*--download"):
        D.load_cifar("cifar10", data_dir=tmp_path / "empty", val_size=10)


def test_cifar_pickle_payload_is_refused(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    for mem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / mem).write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    with pytest.raises(DataError, match="refuses"):
        D.load_cifar("cifar10", data_dir=tmp_path)
    assert not marker.exists()


def test_resumed_download(tmp_path, range_server):
    payload = os.urandom(300_000)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.bin").write_bytes(payload)
    spec = RemoteFile("f.bin", hashlib.sha256(payload).hexdigest(), len(payload))
    url, srv = range_server(tmp_path / "srv", cut_first=100_000)  # the first response stops early
    dest = tmp_path / "dl" / "f.bin"
    download([url + "f.bin"], dest, spec, backoff=0)
    assert dest.read_bytes() == payload
    assert srv.requests == [("/f.bin", 0), ("/f.bin", 100_000)], srv.requests  # resumed, not restarted
    assert not dest.with_name("f.bin.part").exists()


def test_truncated_and_wrong_checksum_downloads_are_never_used(tmp_path, range_server):
    payload = os.urandom(50_000)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.bin").write_bytes(payload[:30_000])  # the server only has part of it
    url, _ = range_server(tmp_path / "srv")
    dest = tmp_path / "dl" / "f.bin"
    with pytest.raises(DataError, match="ended at 30000 of 50000"):
        download([url + "f.bin"], dest, RemoteFile("f.bin", hashlib.sha256(payload).hexdigest(), 50_000),
                 retries=2, backoff=0)
    assert not dest.exists()
    (tmp_path / "srv" / "g.bin").write_bytes(payload)
    with pytest.raises(DataError, match="does not match"):
        download([url + "g.bin"], tmp_path / "dl" / "g.bin", RemoteFile("g.bin", "0" * 64, 50_000),
                 retries=2, backoff=0)
    assert not (tmp_path / "dl" / "g.bin").exists() and not (tmp_path / "dl" / "g.bin.part").exists()


def test_offline_forbids_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("NOPROP_OFFLINE", "1")
    with pytest.raises(DataError, match="forbidden"):
        download(["http://127.0.0.1:9/x"], tmp_path / "x", RemoteFile("x", "0" * 64))


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "hardlink"])
def test_hostile_tar_members_are_refused(tmp_path, kind):
    arch = tmp_path / "a.tar"
    with tarfile.open(arch, "w") as tar:
        info = tarfile.TarInfo({"traversal": "../evil.txt", "absolute": "/tmp/noprop-evil.txt",
                                "symlink": "link", "hardlink": "hard"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match="refuses"):
        safe_extract(arch, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def write_idx(path, arr):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def install_idx(monkeypatch, name, folder, arrays):
    """Write arrays as the dataset's four IDX files and make their md5 sums the expected ones."""
    files, mirrors = D.IDX_DATASETS[name]
    specs = {}
    for k, f in files.items():
        write_idx(folder / f.name, arrays[k])
        specs[k] = RemoteFile(f.name, hashlib.md5((folder / f.name).read_bytes()).hexdigest(), None, "md5")
    monkeypatch.setitem(D.IDX_DATASETS, name, (specs, mirrors))


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_other_idx_datasets(tmp_path, monkeypatch, name):
    rng = np.random.default_rng(0)
    folder = tmp_path / name
    folder.mkdir()
    files, mirrors = D.IDX_DATASETS[name]
    arrays = {"train_images": rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, 50, dtype=np.uint8),
              "test_images": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, 20, dtype=np.uint8)}
    install_idx(monkeypatch, name, folder, arrays)
    d = D.load_dataset(name, data_dir=tmp_path, val_size=5)
    assert (len(d.train), len(d.val), len(d.test)) == (45, 5, 20) and d.image_shape == (1, 28, 28)
    # the real checksums are the published md5 sums: our random files do not pass them
    monkeypatch.setitem(D.IDX_DATASETS, name, (files, mirrors))
    with pytest.raises(DataError, match="md5|bytes, expected"):
        D.load_dataset(name, data_dir=tmp_path, val_size=5)


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def good_arrays(layout="nhwc"):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 20, 20, 3), dtype=np.uint8)
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return dict(x_train=x, y_train=np.arange(30) % 4, x_test=x[:10], y_test=np.arange(10) % 4)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_npz_loads_any_size_and_class_count(tmp_path, layout):
    d = D.load_dataset(save_npz(tmp_path / "mine.npz", **good_arrays(layout)), val_size=5)
    assert d.image_shape == (3, 20, 20) and d.num_classes == 4 and len(d.test) == 10


@pytest.mark.parametrize("change,needle", [
    (dict(x_train=np.full((30, 20, 20), np.nan, dtype=np.float32)), "NaN or inf"),
    (dict(x_train=np.zeros((30, 20), dtype=np.uint8)), "shape"),
    (dict(x_train=np.zeros((30, 20, 20), dtype=np.int64)), "dtype"),
    (dict(y_test=np.full(10, 7)), "out of range"),
    (dict(y_test=-np.ones(10, dtype=np.int64)), "out of range"),
    (dict(y_train=np.zeros(29, dtype=np.int64)), "labels"),
    (dict(y_train=np.zeros(30, dtype=np.float32)), "integer"),
])
def test_npz_bad_inputs_are_named(tmp_path, change, needle):
    arrays = {**good_arrays(), **change}
    if change.get("x_train") is not None and change["x_train"].ndim == 3:
        arrays["x_test"] = arrays["x_test"][..., 0]
    with pytest.raises(DataError, match=needle):
        D.load_dataset(save_npz(tmp_path / "bad.npz", **arrays), val_size=5)


def test_npz_missing_key(tmp_path):
    a = good_arrays()
    del a["y_test"]
    with pytest.raises(DataError, match="lacks y_test"):
        D.load_dataset(save_npz(tmp_path / "bad.npz", **a), val_size=5)


def test_augment_is_a_random_crop_of_the_padded_image_flipped_half_the_time():
    """Every output image is exactly one of the 9 x 9 crops of its own image zero-padded by 4, or that
    crop mirrored left-right; over 300 images every offset occurs and about half are mirrored."""
    torch.manual_seed(0)
    n, pad = 300, 4
    x = torch.rand(n, 2, 6, 6) + 0.1  # no zero pixel: a crop's border shows where the padding is
    out = D.augment(x, pad)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    crops = padded.unfold(2, 6, 1).unfold(3, 6, 1)  # [n, c, dy, dx, 6, 6]
    crops = torch.stack([crops, crops.flip(-1)], 2).permute(0, 2, 3, 4, 1, 5, 6)  # [n, flip, dy, dx, c, 6, 6]
    match = (crops == out[:, None, None, None]).flatten(-3).all(-1)  # [n, flip, dy, dx]
    assert match.flatten(1).sum(1).eq(1).all()  # one crop each, of its own image
    flip, dy, dx = torch.unravel_index(match.flatten(1).int().argmax(1), match.shape[1:])
    assert set(dy.tolist()) == set(dx.tolist()) == set(range(2 * pad + 1))
    assert 0.4 < flip.float().mean().item() < 0.6  # binomial s.e. at n = 300: 0.03


def test_idx_image_label_count_mismatch_is_named(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "kmnist"
    folder.mkdir()
    arrays = {"train_images": rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, 49, dtype=np.uint8),  # one label short
              "test_images": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, 20, dtype=np.uint8)}
    install_idx(monkeypatch, "kmnist", folder, arrays)
    with pytest.raises(DataError, match="50 images but .*train-labels-idx1-ubyte.gz has 49 labels"):
        D.load_dataset("kmnist", data_dir=tmp_path, val_size=5)
