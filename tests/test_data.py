"""Dataset loaders: each on-disk layout written small in tmp_path, then loaded and checked.

Nothing here downloads: torchvision's download classes are replaced by fakes that write
(or fail to write) the files, so only the delegation is tested.
"""
import gzip
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.errors import DataError, UnknownNameError
from baselines.registry import DATASETS
from benchmarks.data import DatasetBundle, load_dataset
from benchmarks.data import cifar, fashion_mnist, idx, imagefolder, npz, tiny_imagenet, toy

ALL = ["cifar10", "cifar100", "fashion-mnist", "imagefolder", "npz", "tiny-imagenet", "toy"]


@pytest.fixture(autouse=True)
def _isolated_default_root(tmp_path, monkeypatch):
    """Keep the user's ~/.cache data (and $DFKD_DATA_ROOT) out of every test."""
    monkeypatch.setenv("DFKD_DATA_ROOT", str(tmp_path / "default-root"))


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- IDX / Fashion-MNIST
def write_fmnist(d: Path, n_train=20, n_test=10, gz=True, seed=0):
    r = _rng(seed)
    arrs = {"train_x": r.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train_y": (np.arange(n_train) % 10).astype(np.uint8),
            "test_x": r.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "test_y": (np.arange(n_test) % 10)[::-1].astype(np.uint8)}
    d.mkdir(parents=True, exist_ok=True)
    for k, stem in fashion_mnist.FILES.items():
        idx.write_idx(d / (stem + (".gz" if gz else "")), arrs[k])
    return arrs


def test_idx_roundtrip_and_header_checks(tmp_path):
    a = _rng().integers(0, 256, (3, 5, 4), dtype=np.uint8)
    idx.write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "a.gz", ndim=3), a)
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:8] == (3).to_bytes(4, "big")
    bad = {
        "magic": b"\x01" + raw[1:],
        "type byte": raw[:2] + b"\x0d" + raw[3:],
        "truncated": raw[:-7],
        "header": raw[:6],
    }
    for why, b in bad.items():
        with pytest.raises(DataError, match="not a valid IDX"):
            idx.parse_idx(b, "f.idx")
    with pytest.raises(DataError, match="3 dimensions, expected 1"):
        idx.parse_idx(raw, "f.idx", ndim=1)


def test_fashion_mnist_from_data_root_gz(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    arrs = write_fmnist(tmp_path / "fm")
    b = fashion_mnist.load(str(tmp_path / "fm"))
    assert isinstance(b, DatasetBundle)
    assert b.train_x.shape == (20, 1, 32, 32) and b.test_x.shape == (10, 1, 32, 32)
    assert b.train_x.dtype == torch.uint8 and b.train_y.dtype == torch.int64
    # zero padding of 2 on every side, the original 28x28 in the centre
    np.testing.assert_array_equal(b.train_x[:, 0, 2:30, 2:30].numpy(), arrs["train_x"])
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert int(b.train_x[:, 0][:, border].abs().sum()) == 0
    np.testing.assert_array_equal(b.test_y.numpy(), arrs["test_y"])
    s = b.spec
    assert (s.channels, s.image_size, s.num_classes, s.mean, s.std, s.hflip) == (1, 32, 10, (0.2860,), (0.3530,), True)
    assert b.source == str(tmp_path / "fm")


def test_fashion_mnist_search_order(tmp_path, monkeypatch):
    """An explicit data_root is the only place looked (never a fallback); without one, the
    Debian directory, then the default root."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "debian")
    write_fmnist(tmp_path / "debian", n_train=11, seed=1)
    write_fmnist(tmp_path / "default-root", n_train=12, seed=2)
    write_fmnist(tmp_path / "mine", n_train=13, seed=3)
    assert len(fashion_mnist.load(str(tmp_path / "mine")).train_y) == 13
    with pytest.raises(DataError, match="not found in the given data root") as ei:
        fashion_mnist.load(str(tmp_path / "empty"))
    assert str(tmp_path / "debian") + " (" not in str(ei.value)  # not looked in, only named as the alternative
    assert len(fashion_mnist.load().train_y) == 11
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    b = fashion_mnist.load()
    assert len(b.train_y) == 12 and b.source == str(tmp_path / "default-root")


def test_fashion_mnist_torchvision_raw_layout_uncompressed(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    arrs = write_fmnist(tmp_path / "root" / "FashionMNIST" / "raw", gz=False)
    b = fashion_mnist.load(str(tmp_path / "root"))
    np.testing.assert_array_equal(b.train_y.numpy(), arrs["train_y"])
    assert b.source.endswith(os.path.join("FashionMNIST", "raw"))


def test_fashion_mnist_missing_lists_places_and_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    partial = tmp_path / "partial"
    write_fmnist(partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as ei:
        load_dataset("fashion-mnist", str(partial))
    msg = str(ei.value)
    for place in (partial, partial / "FashionMNIST" / "raw"):
        assert f"  - {place} (" in msg
    assert f"  - {tmp_path / 'default-root'}" not in msg  # an explicit root never falls back
    with pytest.raises(DataError) as ei:
        load_dataset("fashion-mnist")
    for place in (tmp_path / "no-debian", tmp_path / "default-root", tmp_path / "default-root" / "FashionMNIST" / "raw"):
        assert f"  - {place} (" in str(ei.value)
    assert "missing t10k-labels-idx1-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg
    assert "train-images-idx3-ubyte.gz" in msg  # the layout


def test_fashion_mnist_corrupt_header_names_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    d = tmp_path / "fm"
    write_fmnist(d)
    bad = d / "train-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x09\x03" + b"\x00" * 40)  # type byte 0x09 is not uint8
    with pytest.raises(DataError) as ei:
        fashion_mnist.load(str(d))
    assert str(bad) in str(ei.value) and "type byte" in str(ei.value) and "get it again" in str(ei.value)
    # a truncated gzip stream is reported the same way
    bad.write_bytes(gzip.compress(b"\x00" * 4000)[:30])
    with pytest.raises(DataError, match="corrupt or truncated") as ei:
        fashion_mnist.load(str(d))
    assert str(bad) in str(ei.value)


def test_fashion_mnist_mismatched_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    d = tmp_path / "fm"
    write_fmnist(d)
    idx.write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match="20 images but .* 7 labels"):
        fashion_mnist.load(str(d))


def test_fashion_mnist_download_delegates_to_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    calls = []

    class FakeFMNIST:  # what torchvision leaves behind: raw/ with .gz and extracted files
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            write_fmnist(Path(root) / "FashionMNIST" / "raw", gz=False)

    monkeypatch.setattr(tvd, "FashionMNIST", FakeFMNIST)
    with pytest.raises(DataError):  # download=False never calls torchvision
        fashion_mnist.load(str(tmp_path / "dl"))
    assert calls == []
    b = fashion_mnist.load(str(tmp_path / "dl"), download=True)
    assert calls and all(c[0] == str(tmp_path / "dl") and c[2] for c in calls)
    assert b.train_x.shape == (20, 1, 32, 32)

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("network unreachable")

    monkeypatch.setattr(tvd, "FashionMNIST", Offline)
    with pytest.raises(DataError, match="download into .* failed .*network unreachable") as ei:
        fashion_mnist.load(str(tmp_path / "dl2"), download=True)
    assert "apt-get install dataset-fashion-mnist" in str(ei.value)


@pytest.mark.skipif(not all((fashion_mnist.DEBIAN_DIR / f"{s}.gz").is_file() for s in fashion_mnist.FILES.values()),
                    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_debian_path_full_dataset():
    t = time.perf_counter()
    b = load_dataset("fashion-mnist")
    dt = time.perf_counter() - t
    assert b.source == str(fashion_mnist.DEBIAN_DIR)
    assert b.train_x.shape == (60000, 1, 32, 32) and b.test_x.shape == (10000, 1, 32, 32)
    assert torch.equal(b.train_y.bincount(), torch.full((10,), 6000))
    assert torch.equal(b.test_y.bincount(), torch.full((10,), 1000))
    mean, std = npz.channel_stats(b.train_x[:, :, 2:30, 2:30])  # the published stats are over 28x28
    assert abs(mean[0] - 0.2860) < 5e-4 and abs(std[0] - 0.3530) < 5e-4
    assert dt < 10, f"loading took {dt:.1f} s"


# ----------------------------------------------------------------------------- CIFAR
def write_cifar(root: Path, v: "cifar.CifarVariant", per_file=4, seed=0, protocol=2):
    r = _rng(seed)
    folder = root / v.folder
    folder.mkdir(parents=True)
    written = {}
    for i, f in enumerate((*v.train_files, v.test_file)):
        n = per_file if f != v.test_file else 3
        d = {b"data": r.integers(0, 256, (n, 3072), dtype=np.uint8),
             v.label_key: [int(x) for x in r.integers(0, v.num_classes, n)],
             b"batch_label": b"batch"}
        if v is cifar.CIFAR100:
            d[b"coarse_labels"] = [19] * n  # must be ignored
        with open(folder / f, "wb") as fh:
            pickle.dump(d, fh, protocol=protocol)
        written[f] = d
    meta = "batches.meta" if v is cifar.CIFAR10 else "meta"
    with open(folder / meta, "wb") as fh:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(v.num_classes)]}, fh)
    return written


@pytest.mark.parametrize("name,v", [("cifar10", cifar.CIFAR10), ("cifar100", cifar.CIFAR100)])
def test_cifar_layout(tmp_path, name, v):
    w = write_cifar(tmp_path, v)
    b = load_dataset(name, str(tmp_path))
    n_train = 4 * len(v.train_files)
    assert b.train_x.shape == (n_train, 3, 32, 32) and b.test_x.shape == (3, 3, 32, 32)
    assert b.train_x.dtype == torch.uint8 and b.train_y.dtype == torch.int64
    # row layout: 1024 R, 1024 G, 1024 B, each row-major 32x32
    row = w[v.train_files[0]][b"data"][1]
    np.testing.assert_array_equal(b.train_x[1, 0].numpy(), row[:1024].reshape(32, 32))
    np.testing.assert_array_equal(b.train_x[1, 2].numpy(), row[2048:].reshape(32, 32))
    want_y = sum((w[f][v.label_key] for f in v.train_files), [])
    assert b.train_y.tolist() == want_y
    assert b.test_y.tolist() == w[v.test_file][v.label_key]
    assert (b.spec.num_classes, b.spec.mean, b.spec.std, b.spec.channels) == (v.num_classes, v.mean, v.std, 3)
    assert b.source == str(tmp_path / v.folder)


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError) as ei:
        cifar.load_cifar10(str(tmp_path))
    msg = str(ei.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and str(tmp_path / "default-root") not in msg
    assert "not found in the given data root" in msg  # an explicit root is the only place looked
    with pytest.raises(DataError) as ei:
        cifar.load_cifar10()
    assert str(tmp_path / "default-root" / "cifar-10-batches-py") in str(ei.value)
    assert "--download" in msg and "cifar-10-python.tar.gz" in msg and "data_batch_1" in msg
    write_cifar(tmp_path, cifar.CIFAR10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3"):
        cifar.load_cifar10(str(tmp_path))
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError) as ei:
        cifar.load_cifar10(str(tmp_path))
    assert str(bad) in str(ei.value) and "get it again" in str(ei.value)


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar(tmp_path, cifar.CIFAR10)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(DataError, match="refusing to load"):
        cifar.load_cifar10(str(tmp_path))
    assert not marker.exists()


def test_cifar_rejects_wrong_label_range_and_shape(tmp_path):
    write_cifar(tmp_path, cifar.CIFAR10)
    f = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(f, "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, fh)
    with pytest.raises(DataError, match="labels span 0..10, expected 0..9"):
        cifar.load_cifar10(str(tmp_path))
    with open(f, "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DataError, match="N x 3072"):
        cifar.load_cifar10(str(tmp_path))


def test_cifar_download_delegates(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    seen = []

    class FakeCIFAR100:
        def __init__(self, root, train=True, download=False):
            seen.append((root, download))
            write_cifar(Path(root), cifar.CIFAR100)

    monkeypatch.setattr(tvd, "CIFAR100", FakeCIFAR100)
    b = cifar.load_cifar100(str(tmp_path / "r"), download=True)
    assert seen == [(str(tmp_path / "r"), True)] and b.spec.num_classes == 100


# ----------------------------------------------------------------------------- Tiny-ImageNet
def write_tiny(root: Path, wnids=("n02", "n01", "n03"), per_class=2):
    t = root / "tiny-imagenet-200"
    (t / "val" / "images").mkdir(parents=True)
    (t / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colors = {w: c for w, c in zip(wnids, [(200, 30, 30), (30, 200, 30), (30, 30, 200)])}
    for w in wnids:
        d = t / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (64, 64), colors[w]).save(d / f"{w}_{i}.JPEG", quality=95)
    Image.new("L", (64, 64), 128).save(t / "train" / wnids[0] / "images" / f"{wnids[0]}_grey.JPEG")
    lines = []
    for i, w in enumerate(["n03", "n01", "n02", "n01"]):
        Image.new("RGB", (64, 64), colors[w]).save(t / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (t / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return t, colors


def test_tiny_imagenet_layout(tmp_path):
    t, colors = write_tiny(tmp_path)
    b = load_dataset("tiny-imagenet", str(tmp_path))
    assert b.train_x.shape == (7, 3, 64, 64) and b.test_x.shape == (4, 3, 64, 64)
    assert b.train_x.dtype == torch.uint8 and b.test_y.dtype == torch.int64
    order = sorted(colors)  # classes sorted by wnid: n01 -> 0, n02 -> 1, n03 -> 2
    assert b.test_y.tolist() == [order.index(w) for w in ["n03", "n01", "n02", "n01"]]
    assert b.train_y.bincount().tolist() == [2, 3, 2]  # n02 also has the grey image
    for x, y in zip(b.test_x, b.test_y):  # each image shows its class colour (JPEG is lossy)
        rgb = x.float().mean((1, 2))
        assert torch.allclose(rgb, torch.tensor(colors[order[int(y)]], dtype=torch.float), atol=6)
    grey = b.train_x[b.train_y == 1][-1]  # n02_grey.JPEG sorts last; converted to 3 equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2]) and abs(grey.float().mean() - 128) < 3
    assert (b.spec.num_classes, b.spec.image_size, b.spec.channels) == (3, 64, 3)
    assert b.source == str(t)


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(DataError) as ei:
        tiny_imagenet.load(str(tmp_path), download=True)
    msg = str(ei.value)
    assert str(tmp_path / "tiny-imagenet-200") in msg and "cs231n.stanford.edu/tiny-imagenet-200.zip" in msg
    assert "val_annotations.txt" in msg and "cannot fetch" in msg
    t, _ = write_tiny(tmp_path)
    ann = t / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="val_annotations.txt:5: .*n99"):
        tiny_imagenet.load(str(tmp_path))
    Image.new("RGB", (32, 32)).save(t / "val" / "images" / "val_0.JPEG")
    ann.write_text("val_0.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="val_0.JPEG: image is 32x32 .* expected 64x64"):
        tiny_imagenet.load(str(tmp_path))


# ----------------------------------------------------------------------------- npz
def test_npz_grey_28_is_padded_and_stats_from_train(tmp_path):
    r = _rng()
    xtr = r.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    xte = r.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    p = tmp_path / "mine.npz"
    np.savez(p, x_train=xtr, y_train=np.arange(30) % 3, x_test=xte, y_test=np.full(12, 2, np.uint8))
    b = load_dataset("npz", str(p))
    assert b.train_x.shape == (30, 1, 32, 32) and b.test_x.shape == (12, 1, 32, 32)
    np.testing.assert_array_equal(b.test_x[:, 0, 2:30, 2:30].numpy(), xte)
    assert int(b.train_x[:, :, :2].sum()) == 0
    assert b.spec.num_classes == 3 and b.test_y.dtype == torch.int64 and b.train_y.tolist()[:4] == [0, 1, 2, 0]
    xf = xtr.astype(np.float64) / 255
    assert b.spec.mean[0] == pytest.approx(xf.mean(), abs=1e-6)
    assert b.spec.std[0] == pytest.approx(xf.std(), abs=1e-6)
    assert b.source == str(p)


@pytest.mark.parametrize("size,out", [(32, 32), (64, 64), (20, 32), (48, 32)])
def test_npz_size_policy_channels_last(tmp_path, size, out):
    r = _rng()
    xtr = r.integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    xtr[0] = (10, 100, 200)  # a constant image stays constant under any resize
    p = tmp_path / "c.npz"
    np.savez(p, x_train=xtr, y_train=np.arange(6), x_test=xtr[:2], y_test=np.arange(2))
    b = npz.load(str(p))
    assert b.train_x.shape == (6, 3, out, out) and b.spec.image_size == out and b.spec.channels == 3
    assert b.train_x[0].reshape(3, -1).unique(dim=1).tolist() == [[10], [100], [200]]
    if out == size:
        np.testing.assert_array_equal(b.train_x.numpy(), xtr.transpose(0, 3, 1, 2))
    for c in range(3):
        assert b.spec.mean[c] == pytest.approx(xtr[..., c].mean() / 255, abs=1e-6)


def test_npz_errors_name_key_and_layout(tmp_path):
    p = tmp_path / "d.npz"
    x = np.zeros((4, 8, 8), np.uint8)
    np.savez(p, x_train=x, y_train=np.arange(4), x_test=x)
    with pytest.raises(DataError, match=r"missing array\(s\) y_test \(found: x_test, x_train, y_train\)") as ei:
        npz.load(str(p))
    assert str(p) in str(ei.value) and "x_train, x_test (uint8, N x H x W or N x H x W x C" in str(ei.value)
    np.savez(p, x_train=x.astype(np.float32), y_train=np.arange(4), x_test=x, y_test=np.arange(4))
    with pytest.raises(DataError, match="x_train has dtype float32, expected uint8") as ei:
        npz.load(str(p))
    assert "N x H x W x C" in str(ei.value)
    np.savez(p, x_train=x, y_train=np.arange(4) * 0.5, x_test=x, y_test=np.arange(4))
    with pytest.raises(DataError, match="y_train has dtype float64, expected integer"):
        npz.load(str(p))
    np.savez(p, x_train=np.zeros((4, 3, 8, 8), np.uint8), y_train=np.arange(4), x_test=x, y_test=np.arange(4))
    with pytest.raises(DataError, match="only square images"):  # channels-first is rejected, not misread
        npz.load(str(p))
    with pytest.raises(DataError, match="no such file") as ei:
        npz.load(str(tmp_path / "absent.npz"))
    assert str(tmp_path / "absent.npz") in str(ei.value)
    with pytest.raises(DataError, match="no file given"):
        npz.load(None)


@pytest.mark.parametrize("y_train, y_test, match", [
    ([0, 1, 2, 3, 4, 5] * 2, [6, 7, 8, 9], r"test label\(s\) 6\.\.9 do not occur among the training labels 0\.\.5"),
    ([0, 1, 2, 3] * 3, [0, 1, 57], r"test label\(s\) 57 do not occur"),
    ([0, 1, 3, 5] * 3, [0, 1], r"class\(es\) 2, 4 have no training images; classes must be contiguous"),
    ([1, 2, 3] * 4, [1, 2], r"class\(es\) 0 have no training images"),
])
def test_npz_label_sets_are_validated(tmp_path, y_train, y_test, match):
    """Test labels within the train labels, classes contiguous 0..K-1: a 6-class teacher
    at 0% accuracy or a stray label making a 58-class model is refused before compute."""
    p = tmp_path / "l.npz"
    np.savez(p, x_train=np.zeros((len(y_train), 8, 8), np.uint8), y_train=np.array(y_train),
             x_test=np.zeros((len(y_test), 8, 8), np.uint8), y_test=np.array(y_test))
    with pytest.raises(DataError, match=match) as ei:
        npz.load(str(p))
    assert str(p) in str(ei.value)


# ----------------------------------------------------------------------------- imagefolder
def write_folder(root: Path, classes=("dog", "cat"), size=28, n=3, mode="L"):
    r = _rng()
    for split, k in (("train", n), ("test", 1)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(k):
                shape = (size, size) if mode == "L" else (size, size, 3)
                Image.fromarray(r.integers(0, 256, shape, dtype=np.uint8), mode).save(d / f"{i}.png")


def test_imagefolder_grey_png(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    b = load_dataset("imagefolder", str(tmp_path))
    assert b.train_x.shape == (6, 1, 32, 32) and b.test_x.shape == (2, 1, 32, 32)
    assert b.train_y.tolist() == [0, 0, 0, 1, 1, 1]  # cat < dog
    first = np.asarray(Image.open(tmp_path / "train" / "cat" / "0.png"))
    np.testing.assert_array_equal(b.train_x[0, 0, 2:30, 2:30].numpy(), first)
    raw = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "train").glob("*/*.png"))]) / 255
    assert b.spec.mean[0] == pytest.approx(raw.mean(), abs=1e-6)
    assert b.spec.std[0] == pytest.approx(raw.std(), abs=1e-6)
    assert b.spec.num_classes == 2


def test_imagefolder_rgb_and_errors(tmp_path):
    write_folder(tmp_path / "a", size=32, mode="RGB")
    b = imagefolder.load(str(tmp_path / "a"))
    assert b.train_x.shape == (6, 3, 32, 32) and len(b.spec.mean) == 3
    Image.new("RGB", (30, 30)).save(tmp_path / "a" / "test" / "dog" / "odd.png")
    with pytest.raises(DataError, match="odd.png: image is 30x30 .* expected 32x32"):
        imagefolder.load(str(tmp_path / "a"))
    write_folder(tmp_path / "b")
    (tmp_path / "b" / "test" / "bird").mkdir()
    with pytest.raises(DataError, match="bird do not exist in the train split"):
        imagefolder.load(str(tmp_path / "b"))
    for split in ("train", "test"):  # an empty class folder is refused, in either split
        write_folder(tmp_path / f"e-{split}", classes=("ant", "bee", "cat"))
        for f in (tmp_path / f"e-{split}" / split / "bee").iterdir():
            f.unlink()
        with pytest.raises(DataError, match=r"bee: class folder holds no \.png/\.jpg/\.jpeg images"):
            imagefolder.load(str(tmp_path / f"e-{split}"))
    (tmp_path / "c" / "train").mkdir(parents=True)
    with pytest.raises(DataError) as ei:
        imagefolder.load(str(tmp_path / "c"))
    assert f"{tmp_path / 'c' / 'test'} (no such directory)" in str(ei.value) and "train/<class>" in str(ei.value)


# ----------------------------------------------------------------------------- toy
def test_toy_deterministic_balanced_and_flip_sensitive():
    a, b = toy.load(), load_dataset("toy")
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.shape == (512, 1, 16, 16) and a.test_x.shape == (256, 1, 16, 16)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert a.train_y.bincount().tolist() == [128] * 4 and a.test_y.bincount().tolist() == [64] * 4
    assert a.spec.hflip is False and a.spec.num_classes == 4
    assert not torch.equal(a.train_x, toy.make_toy(seed=1).train_x)
    assert not torch.equal(a.train_x[:256], a.test_x)  # train and test are different draws
    m, s = npz.channel_stats(a.train_x)
    assert (m, s) == (a.spec.mean, a.spec.std)


def test_toy_learnable_by_tiny_cnn():
    from torch import nn

    b = toy.load()
    x = b.spec.normalize(b.train_x.float() / 255)
    xt = b.spec.normalize(b.test_x.float() / 255)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, b.spec.num_classes))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = (net(xt).argmax(1) == b.test_y).float().mean().item()
    for _ in range(150):
        i = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(net(x[i]), b.train_y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (net(xt).argmax(1) == b.test_y).float().mean().item()
    assert before < 0.5 and acc > 0.9, (before, acc)


# ----------------------------------------------------------------------------- registry
def test_every_registered_loader_resolves():
    assert set(ALL) <= set(DATASETS.names())
    for name in ALL:
        assert callable(DATASETS.get(name))


def test_unknown_dataset_lists_known_names():
    with pytest.raises(UnknownNameError) as ei:
        load_dataset("fashion_mnist")
    msg = str(ei.value)
    assert "Did you mean 'fashion-mnist'" in msg
    for name in ALL:
        assert name in msg


def test_channel_stats_matches_numpy():
    x = _rng().integers(0, 256, (5, 3, 7, 7), dtype=np.uint8)
    m, s = npz.channel_stats(x)
    xf = x.astype(np.float64) / 255
    np.testing.assert_allclose(m, xf.mean((0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(s, xf.std((0, 2, 3)), atol=1e-6)
    _, s0 = npz.channel_stats(np.full((2, 1, 3, 3), 7, np.uint8))
    assert s0 == (round(npz.MIN_STD, 6),)  # a constant channel cannot divide by zero
