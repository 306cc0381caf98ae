"""MNIST: verification, search order, download from a local server, the validation split."""

import gzip
import os
import struct

import pytest
import torch

from noprop import data as D
from noprop.data import BUNDLED, MNIST_FILES, DataError, Split, batches, load_mnist, read_idx, split_validation


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("NOPROP_DATA", raising=False)


def test_bundled_mnist_loads_and_is_normalised():
    d = load_mnist(val_size=5000, split_seed=0)
    assert d.source == str(BUNDLED / "mnist")
    assert (len(d.train), len(d.val), len(d.test)) == (55000, 5000, 10000)
    assert d.image_shape == (1, 28, 28) and d.num_classes == 10
    full = torch.cat([d.train.x, d.val.x])
    assert abs(full.mean().item()) < 0.01 and abs(full.std().item() - 1) < 0.01
    assert sorted(d.test.y.unique().tolist()) == list(range(10))


def test_validation_split_is_seeded_and_disjoint():
    x = torch.arange(100).float().reshape(100, 1, 1, 1)
    y = torch.arange(100)
    tr, va = split_validation(x, y, 10, seed=3)
    tr2, va2 = split_validation(x, y, 10, seed=3)
    _, va3 = split_validation(x, y, 10, seed=4)
    assert torch.equal(va.y, va2.y) and not torch.equal(va.y, va3.y)
    assert len(set(tr.y.tolist()) & set(va.y.tolist())) == 0
    assert len(tr) + len(va) == 100
    with pytest.raises(ValueError, match="val-size"):
        split_validation(x, y, 100, seed=0)
    # in place (what loading a dataset does, to hold its largest array once): the same two splits,
    # the training rows now at the front of x itself; chunks of 4096 rows are crossed
    x = torch.randn(10_000, 1, 2, 2)
    y = torch.arange(10_000)
    tr, va = split_validation(x, y, 1_000, seed=5)
    tr_in, va_in = split_validation(x.clone(), y, 1_000, seed=5, in_place=True)
    assert torch.equal(tr_in.x, tr.x) and torch.equal(tr_in.y, tr.y)
    assert torch.equal(va_in.x, va.x) and torch.equal(va_in.y, va.y)
    assert torch.equal(tr.x, x[tr.y])  # y holds each row's index: the rows are the right ones


def test_search_order_data_dir_then_env_then_bundled(tmp_path, mnist_copy, monkeypatch):
    other = tmp_path / "env" / "mnist"
    other.parent.mkdir()
    os.rename(mnist_copy, other)
    monkeypatch.setenv("NOPROP_DATA", str(tmp_path / "env"))
    assert load_mnist(val_size=10).source == str(other)
    mine = tmp_path / "mine"
    mine.mkdir()
    for f in other.iterdir():
        (mine / f.name).write_bytes(f.read_bytes())
    assert load_mnist(data_dir=mine, val_size=10).source == str(mine)


def test_truncated_file_is_named(mnist_copy):
    p = mnist_copy / MNIST_FILES["train_labels"].name
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*bytes, expected"):
        load_mnist(data_dir=mnist_copy.parent)


def test_tampered_file_is_named(mnist_copy):
    p = mnist_copy / MNIST_FILES["test_labels"].name
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match="t10k-labels.*sha256"):
        load_mnist(data_dir=mnist_copy.parent)


def test_partial_copy_is_named(mnist_copy):
    (mnist_copy / MNIST_FILES["test_images"].name).unlink()
    with pytest.raises(DataError, match="lacks t10k-images"):
        load_mnist(data_dir=mnist_copy.parent)


def write_idx(path, magic: bytes, dims, body: bytes):
    with gzip.open(path, "wb") as f:
        f.write(magic + struct.pack(f">{len(dims)}I", *dims) + body)


def test_idx_parser_checks_magic_and_length(tmp_path):
    p = tmp_path / "x.gz"
    write_idx(p, b"\x00\x00\x08\x03", (2, 2, 2), bytes(8))
    assert read_idx(p, 3).shape == (2, 2, 2)
    write_idx(p, b"\x00\x00\x08\x01", (8,), bytes(8))
    with pytest.raises(DataError, match="magic"):
        read_idx(p, 3)
    write_idx(p, b"\x00\x00\x08\x03", (2, 2, 2), bytes(7))
    with pytest.raises(DataError, match="header says"):
        read_idx(p, 3)
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="gzip"):
        read_idx(p, 3)


def test_missing_files_without_download_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.setattr("noprop.data.BUNDLED", tmp_path / "nothing")
    with pytest.raises(DataError) as e:
        load_mnist(data_dir=tmp_path / "empty")
    msg = str(e.value)
    assert "looked in" in msg and str(tmp_path / "empty") in msg and "--download" in msg


def test_no_folder_to_search_is_worded_as_what_to_pass(monkeypatch):
    monkeypatch.delenv("NOPROP_DATA", raising=False)
    with pytest.raises(DataError) as e:
        D.load_idx_dataset("kmnist")
    msg = str(e.value)
    assert "no folder to look in was given" in msg and "--data-dir DIR" in msg and "Looked in: ." not in msg


def test_a_valid_file_of_another_dataset_is_named_as_such(tmp_path, mnist_copy, monkeypatch):
    """--dataset fashion-mnist pointed at a folder of MNIST files: the files are fine, just not
    Fashion-MNIST's, so the advice must not be to delete them."""
    monkeypatch.delenv("NOPROP_DATA", raising=False)
    with pytest.raises(DataError) as e:
        D.load_idx_dataset("fashion-mnist", data_dir=mnist_copy)
    msg = str(e.value)
    assert "official mnist file" in msg and "not fashion-mnist's" in msg and "--dataset mnist" in msg
    assert "delete" not in msg
    # a damaged file is still reported as damaged (the images are checked first)
    p = mnist_copy / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match="delete it"):
        D.load_idx_dataset("fashion-mnist", data_dir=mnist_copy)


def test_download_from_local_server_verifies(tmp_path, monkeypatch, http_server):
    monkeypatch.setattr("noprop.data.BUNDLED", tmp_path / "nothing")
    url = http_server(BUNDLED / "mnist")
    target = tmp_path / "dl"
    d = load_mnist(data_dir=target, allow_download=True, val_size=10, mirrors=(url,))
    assert d.source == str(target / "mnist") and len(d.test) == 10000


def test_download_of_bad_file_is_refused_and_not_kept(tmp_path, monkeypatch, http_server):
    monkeypatch.setattr("noprop.data.BUNDLED", tmp_path / "nothing")
    bad = tmp_path / "server"
    bad.mkdir()
    for f in (BUNDLED / "mnist").glob("*.gz"):
        data = f.read_bytes()
        (bad / f.name).write_bytes(data[:-10] if "labels" in f.name else data)  # truncated labels
    url = http_server(bad)
    target = tmp_path / "dl"
    with pytest.raises(DataError, match="could not download train-labels"):
        load_mnist(data_dir=target, allow_download=True, mirrors=(url,))
    left = sorted(p.name for p in (target / "mnist").iterdir())
    # only the resumable .part file remains: nothing unverified under a name the loader would use
    assert "train-labels-idx1-ubyte.gz" not in left and "train-labels-idx1-ubyte.gz.part" in left, left


def test_batches():
    s = Split(torch.zeros(10, 1, 1, 1), torch.arange(10))
    got = [y.tolist() for _, y in batches(s, 4, torch.Generator().manual_seed(0), drop_last=True)]
    assert len(got) == 2 and all(len(b) == 4 for b in got)
    assert [len(y) for _, y in batches(s, 4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="batch-size"):
        next(batches(s, 11))
