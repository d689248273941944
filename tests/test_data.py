"""IDX files written by the tests: reading, checking, locating, downloading from a local server."""

import functools
import gzip
import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch

from conftest import FASHION_DIR, synthetic_split, write_dataset, write_idx
from mnistlab import data
from mnistlab.config import DataConfig
from mnistlab.data import DataError, load_data, locate, read_split


def idx_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="idx", root=str(root), **kw)


@pytest.mark.parametrize("gz", [False, True])
def test_own_idx_data_any_size_and_classes(tmp_path, gz):
    write_dataset(tmp_path, n_train=50, n_test=20, size=9, classes=3, gz=gz)
    splits = load_data(idx_cfg(tmp_path), val_split=0.2, seed=0)
    assert splits.image_shape == (1, 9, 9)
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (40, 10, 20)
    assert splits.num_classes == 3 and splits.class_names == ["0", "1", "2"]
    images, labels = synthetic_split(50, 9, 3, seed=1)
    # normalised with the statistics of the training split alone: validation images do not leak in
    scaled = images.float() / 255
    train_idx = torch.randperm(50, generator=torch.Generator().manual_seed(0))[10:]
    assert splits.mean == pytest.approx(scaled[train_idx].mean().item(), rel=1e-5)
    assert splits.mean != pytest.approx(scaled.mean().item(), rel=1e-5)
    assert splits.train_x.mean().item() == pytest.approx(0, abs=1e-4)
    assert splits.train_x.std().item() == pytest.approx(1, abs=1e-3)
    # the split is a seeded permutation: same seed, same split; every image lands once
    again = load_data(idx_cfg(tmp_path), val_split=0.2, seed=0)
    assert torch.equal(again.val_y, splits.val_y)
    assert sorted(torch.cat([splits.train_y, splits.val_y]).tolist()) == sorted(labels.long().tolist())


def test_parsed_files_are_cached_and_the_cache_follows_file_changes(tmp_path):
    write_dataset(tmp_path / "d", n_train=40, n_test=10)
    first = load_data(idx_cfg(tmp_path / "d"), 0, 0)
    (cache,) = (Path(os.environ["XDG_CACHE_HOME"]) / "mnistlab" / "cache").iterdir()
    assert torch.load(cache, weights_only=True)["train"][0].shape == (40, 12, 12)
    write_dataset(tmp_path / "d", n_train=30, n_test=10)  # the files change: read anew
    assert len(load_data(idx_cfg(tmp_path / "d"), 0, 0).train_x) == 30
    cache.write_bytes(b"garbage")  # a damaged cache is rebuilt, not trusted
    assert len(load_data(idx_cfg(tmp_path / "d"), 0, 0).train_x) == 30
    assert len(first.train_x) == 40


def test_subsets_limit_the_splits(tmp_path):
    write_dataset(tmp_path, n_train=100, n_test=40)
    splits = load_data(idx_cfg(tmp_path, train_samples=30, test_samples=10), 0.1, 0)
    assert (len(splits.train_x) + len(splits.val_x), len(splits.test_x)) == (30, 10)


def corrupt(tmp_path: Path, name: str, content: bytes) -> str:
    write_dataset(tmp_path)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as info:
        load_data(idx_cfg(tmp_path), 0.1, 0)
    message = str(info.value)
    assert str(tmp_path / name) in message
    return message


def test_bad_magic_is_named(tmp_path):
    assert "bad magic number" in corrupt(tmp_path, "train-images-idx3-ubyte", b"GIF89a....")


def test_truncated_file_is_named(tmp_path):
    good = (write_dataset(tmp_path) / "t10k-images-idx3-ubyte").read_bytes()
    assert "is truncated" in corrupt(tmp_path, "t10k-images-idx3-ubyte", good[:-100])


def test_labels_where_images_belong(tmp_path):
    labels = (write_dataset(tmp_path) / "train-labels-idx1-ubyte").read_bytes()
    assert "dimensions where images" in corrupt(tmp_path, "train-images-idx3-ubyte", labels)


def test_truncated_gzip_is_named(tmp_path):
    write_dataset(tmp_path, gz=True)
    blob = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="is not a complete gzip file"):
        load_data(idx_cfg(tmp_path), 0.1, 0)


def test_image_and_label_counts_must_agree(tmp_path):
    write_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", torch.zeros(7, dtype=torch.uint8))
    with pytest.raises(DataError, match="256 images but 7 labels"):
        load_data(idx_cfg(tmp_path), 0.1, 0)


def test_missing_data_says_which_files_to_put_where(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    cfg = DataConfig(name="kmnist", root=str(tmp_path), download=False)
    with pytest.raises(DataError) as info:
        locate(cfg)
    message = str(info.value)
    assert "train-labels-idx1-ubyte" in message and "t10k-images-idx3-ubyte" in message
    assert str(tmp_path / "KMNIST" / "raw") in message and "data.root=DIR" in message
    assert "data.download=true" in message
    assert "it lacks train-labels-idx1-ubyte" in message
    assert "Offline, Fashion-MNIST works out of the box" in message


def test_fashion_mnist_error_mentions_the_debian_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        locate(DataConfig(name="fashion-mnist", root=str(tmp_path), download=False))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def publish(monkeypatch, served: Path) -> None:
    """Make the synthetic .gz files in served the 'published' MNIST files (their md5s)."""
    resources = [(p, hashlib.md5((served / p).read_bytes()).hexdigest())
                 for p in (f + ".gz" for f in data.ALL_FILES)]
    monkeypatch.setattr(data.torchvision_class("mnist"), "resources", resources)
    monkeypatch.setattr(data.torchvision_class("mnist"), "mirrors", [])


def test_download_from_a_local_mirror(tmp_path, http_server, monkeypatch):
    served, url = http_server
    write_dataset(served, gz=True)
    publish(monkeypatch, served)
    cfg = DataConfig(name="mnist", root=str(tmp_path / "data"), mirror=url)
    splits = load_data(cfg, 0.1, 0)
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(f + ".gz" for f in data.ALL_FILES)
    assert len(splits.train_x) + len(splits.val_x) == 256
    assert splits.class_names[0] == "0"


def test_download_refuses_a_file_that_does_not_match_its_checksum(tmp_path, http_server, monkeypatch):
    served, url = http_server
    write_dataset(served, gz=True)
    publish(monkeypatch, served)
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01tampered"))
    cfg = DataConfig(name="mnist", root=str(tmp_path / "data"), mirror=url)
    with pytest.raises(DataError) as info:
        load_data(cfg, 0.1, 0)
    assert "checksum mismatch" in str(info.value) and "t10k-labels-idx1-ubyte" in str(info.value)
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert not (raw / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in raw.iterdir() if p.name.startswith(".")], "no partial file is left"


def test_download_failure_says_what_to_do(tmp_path, monkeypatch):
    cfg = DataConfig(name="mnist", root=str(tmp_path), mirror="http://127.0.0.1:9/")
    monkeypatch.setattr(data.torchvision_class("mnist"), "mirrors", [])
    with pytest.raises(DataError) as info:
        locate(cfg)
    message = str(info.value)
    assert "Download failed" in message and "127.0.0.1:9" in message
    assert f"Put the four files in {tmp_path / 'MNIST' / 'raw'}" in message


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_served_locally_downloads_and_verifies(tmp_path, http_server):
    served, url = http_server
    for path in FASHION_DIR.iterdir():
        (served / path.name).write_bytes(path.read_bytes())
    cfg = DataConfig(name="fashion-mnist", root=str(tmp_path / "data"), mirror=url)
    directory = locate(cfg)
    assert directory == tmp_path / "data" / "FashionMNIST" / "raw"
    images, labels = read_split("fashion-mnist", directory, "test")
    assert images.shape == (10000, 28, 28) and labels.bincount().tolist() == [1000] * 10


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_found_without_configuration():
    assert locate(DataConfig(name="fashion-mnist", download=False)) == FASHION_DIR
