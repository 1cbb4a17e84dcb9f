"""Data modules: [0, 1] float32 images, int64 labels, fixed splits, clear errors. CPU only, offline."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from robust.data import (
    CIFAR10, GTSRB, MNIST, DataFormatError, DataNotFoundError, Digits, MNIST10k, Npz, RobustDataModule,
    create_datamodule, default_mnist_t10k_root, list_datamodules)

T10K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"
# sha256 of the decompressed files, from ../shared/data/README.md
T10K_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def assert_batch(x: torch.Tensor, y: torch.Tensor, shape: tuple[int, int, int]) -> None:
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape[1:] == shape and y.shape == (x.shape[0],)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_raw(root: Path, folder: str = "MNIST") -> Path:
    """A tiny MNIST-format set in torchvision's raw layout: 120 training and 30 test images."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 120), ("t10k", 30)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n), 2049)
    return root


def write_gtsrb(root: Path) -> Path:
    """A tiny GTSRB in torchvision's layout: 2 classes x 5 tracks x 3 frames of odd sizes, 4 test images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        for track in range(5):
            folder = root / "gtsrb" / "GTSRB" / "Training" / f"{c:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            for frame in range(3):
                image = rng.integers(0, 256, (20 + 9 * c, 25, 3), dtype=np.uint8)
                Image.fromarray(image).save(folder / f"{track:05d}_{frame:05d}.ppm")
    test = root / "gtsrb" / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 33, 3), dtype=np.uint8)).save(test / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;33;40;0;0;1;1;{i % 2}")
    (root / "gtsrb" / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return root


# -- digits --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(batch_size=100)


def test_digits_attributes(digits):
    assert (digits.name, digits.num_classes, digits.in_channels, digits.image_size) == ("digits", 10, 1, 8)
    assert len(digits.mean) == len(digits.std) == 1
    assert 0.2 < digits.mean[0] < 0.4 and 0.3 < digits.std[0] < 0.5  # 0..16 counts / 16, mostly ink-free


def test_digits_splits_are_1197_300_300_and_partition_the_set(digits):
    from sklearn.datasets import load_digits

    assert digits.split_sizes() == {"train": 1197, "val": 300, "test": 300}
    rows = Counter()
    for x, y in (digits.train_tensors(), digits.val_tensors(), digits.test_tensors()):
        assert_batch(x, y, (1, 8, 8))
        rows.update(tuple(r) for r in torch.cat([x.flatten(1) * 16, y[:, None].float()], 1).round().int().tolist())
    full = load_digits()
    expected = Counter(tuple(r) for r in np.concatenate([full.data, full.target[:, None]], 1).astype(int).tolist())
    assert rows == expected  # together the splits hold every one of the 1,797 images exactly once
    assert torch.bincount(digits.test_tensors()[1]).min() >= 29  # stratified: ~30 of each class


def test_digits_split_is_fixed_across_instances_and_seeds(digits):
    other = Digits(seed=123)
    for a, b in ((digits.train_tensors(), other.train_tensors()), (digits.val_tensors(), other.val_tensors()),
                 (digits.test_tensors(), other.test_tensors())):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_digits_shuffle_follows_seed():
    first = lambda seed: next(iter(Digits(batch_size=32, seed=seed).train_dataloader()))[1]
    assert torch.equal(first(0), first(0))
    assert not torch.equal(first(0), first(1))


def test_digits_every_batch_in_unit_range(digits):
    for loader in (digits.train_dataloader(), digits.val_dataloader(), digits.test_dataloader()):
        for x, y in loader:
            assert_batch(x, y, (1, 8, 8))
    assert len(list(digits.train_dataloader())) == 12  # 1197 / 100, last batch kept (drop_last=False)


def test_digits_upscale():
    dm = Digits(upscale=16, eval_batch_size=300)
    assert dm.image_size == 16 and dm.hparams["upscale"] == 16
    x, y = next(iter(dm.test_dataloader()))
    assert_batch(x, y, (1, 16, 16))
    assert len(x) == 300
    with pytest.raises(ValueError, match="upscale"):
        Digits(upscale=4)


# -- npz -----------------------------------------------------------------------------

def test_npz_uint8_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (50, 12, 12, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    path = tmp_path / "rgb.npz"
    np.savez(path, x_train=x_train, y_train=np.arange(50) % 4, x_test=x_test, y_test=np.arange(10) % 4)
    dm = Npz(str(path), batch_size=16)
    assert (dm.num_classes, dm.in_channels, dm.image_size, len(dm.mean)) == (4, 3, 12, 3)
    assert dm.split_sizes() == {"train": 45, "val": 5, "test": 10}  # val_size=0.1 carved from x_train
    x, y = dm.test_tensors()
    assert_batch(x, y, (3, 12, 12))
    assert torch.equal(x, torch.from_numpy(x_test).permute(0, 3, 1, 2).float() / 255)
    for xb, yb in dm.train_dataloader():
        assert_batch(xb, yb, (3, 12, 12))


def test_npz_float_nchw_and_x_y_split(tmp_path):
    x = np.random.default_rng(1).random((100, 1, 6, 6)).astype(np.float32)
    path = tmp_path / "gray.npz"
    np.savez(path, x=x, y=np.arange(100) % 10)
    dm = Npz(str(path), num_classes=12)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (12, 1, 6)
    assert dm.split_sizes() == {"train": 80, "val": 10, "test": 10}
    parts = [dm.train_tensors()[0], dm.val_tensors()[0], dm.test_tensors()[0]]
    assert sorted(torch.cat(parts).flatten(1).sum(1).tolist()) == sorted(torch.from_numpy(x).flatten(1).sum(1).tolist())
    assert torch.equal(Npz(str(path)).test_tensors()[0], parts[2])  # the 80/10/10 split is fixed


def test_npz_nhw_gets_a_channel(tmp_path):
    path = tmp_path / "nhw.npz"
    np.savez(path, x_train=np.zeros((20, 5, 5), np.uint8), y_train=np.arange(20) % 2)
    assert (Npz(str(path)).in_channels, Npz(str(path)).image_size) == (1, 5)


def test_npz_float_out_of_range_names_file_key_and_range(tmp_path):
    path = tmp_path / "normalised.npz"
    x = np.linspace(-0.5, 2.0, 20 * 16, dtype=np.float32).reshape(20, 1, 4, 4)
    np.savez(path, x_train=x, y_train=np.arange(20) % 2)
    with pytest.raises(ValueError) as info:
        Npz(str(path))
    message = str(info.value)
    assert str(path) in message and "x_train" in message and "-0.5" in message and "2.0" in message


def test_npz_bad_labels(tmp_path):
    path = tmp_path / "labels.npz"
    np.savez(path, x_train=np.zeros((20, 1, 4, 4), np.uint8), y_train=np.arange(20))
    with pytest.raises(ValueError, match="y_train"):
        Npz(str(path), num_classes=10)


def test_npz_missing_file_names_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as info:
        Npz("nowhere/mine.npz")
    assert str(tmp_path.resolve() / "nowhere" / "mine.npz") in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


# -- torchvision sets ----------------------------------------------------------------

@pytest.mark.parametrize("cls", [MNIST, CIFAR10])
def test_torchvision_missing_files_raise_data_not_found(cls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    dm = cls(root="empty", download=False)
    with pytest.raises(DataNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert str(tmp_path.resolve() / "empty") in message and "download=True" in message


def test_mnist_from_torchvision_raw_files(tmp_path):
    """A tiny MNIST in torchvision's raw layout: val carved from train, test untouched."""
    write_mnist_raw(tmp_path)
    dm = MNIST(root=str(tmp_path), val_size=20, augment=True, batch_size=64)
    assert dm.split_sizes() == {"train": 100, "val": 20, "test": 30}
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for x, y in loader:
            assert_batch(x, y, (1, 28, 28))
    x_val, _ = dm.val_tensors()
    assert torch.equal(x_val, MNIST(root=str(tmp_path), val_size=20, seed=9).val_tensors()[0])


def test_gtsrb_resizes_and_validates_on_whole_tracks(tmp_path):
    dm = GTSRB(root=str(write_gtsrb(tmp_path)), image_size=16, val_size=0.2)
    assert dm.split_sizes() == {"train": 24, "val": 6, "test": 4}  # 2 tracks of 3 frames validate
    x, y = dm.test_tensors()
    assert_batch(x, y, (3, 16, 16))
    assert dm.num_classes == 43


# -- mnist-t10k ----------------------------------------------------------------------

needs_t10k = pytest.mark.skipif(not T10K.is_dir(), reason=f"no MNIST t10k files at {T10K}")


@pytest.fixture(scope="module")
def mnist10k() -> MNIST10k:
    return MNIST10k(root=str(T10K), batch_size=1000)


@needs_t10k
def test_t10k_files_are_the_real_ones():
    for name, digest in T10K_SHA256.items():
        assert hashlib.sha256(gzip.decompress((T10K / name).read_bytes())).hexdigest() == digest


@needs_t10k
def test_mnist10k_split(mnist10k):
    assert mnist10k.split_sizes() == {"train": 7000, "val": 1000, "test": 2000}
    x, y = mnist10k.train_tensors()
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the first labels of MNIST's t10k file
    for xs, ys in (mnist10k.train_tensors(), mnist10k.val_tensors(), mnist10k.test_tensors()):
        assert_batch(xs, ys, (1, 28, 28))
        assert float(xs.min()) == 0.0 and float(xs.max()) == 1.0
        assert 0.11 < float(xs.mean()) < 0.16  # MNIST's mean pixel is 0.1307 (0.128..0.148 on these splits)
        counts = torch.bincount(ys, minlength=10).float() / len(ys)
        assert counts.min() > 0.07 and counts.max() < 0.13  # each digit is 8.4%..11.5% of every split
    for xb, yb in mnist10k.test_dataloader():
        assert_batch(xb, yb, (1, 28, 28))
    smaller = MNIST10k(root=str(T10K), val_size=500)
    assert smaller.split_sizes() == {"train": 7500, "val": 500, "test": 2000}
    assert torch.equal(smaller.test_tensors()[0], mnist10k.test_tensors()[0])


@needs_t10k
def test_default_mnist_t10k_root(monkeypatch, tmp_path):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the repository root
    assert default_mnist_t10k_root() == T10K.resolve()
    monkeypatch.chdir(tmp_path)
    assert default_mnist_t10k_root() is None


@needs_t10k
def test_mnist10k_corrupted_idx_names_file_and_magic(tmp_path):
    for name in T10K_SHA256:
        shutil.copy(T10K / name, tmp_path / name)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = bytearray(gzip.decompress(images.read_bytes()))
    data[:4] = (2049).to_bytes(4, "big")  # a labels magic number on the images file
    images.write_bytes(gzip.compress(bytes(data), compresslevel=1))
    with pytest.raises(DataFormatError) as info:
        MNIST10k(root=str(tmp_path)).setup("fit")
    assert str(images) in str(info.value) and "magic" in str(info.value) and "2051" in str(info.value)


def test_mnist10k_missing_directory_names_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as info:
        MNIST10k(root="no-such-dir").setup("test")
    assert str(tmp_path.resolve() / "no-such-dir") in str(info.value)


def test_truncated_idx_is_a_format_error(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes((2051).to_bytes(4, "big") + (10000).to_bytes(4, "big") * 3)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(10000), 2049)
    with pytest.raises(DataFormatError, match="truncated"):
        MNIST10k(root=str(tmp_path)).setup("test")


# -- registry ------------------------------------------------------------------------

def write_npz(root: Path) -> Path:
    path = root / "small.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (40, 3, 6, 6), dtype=np.uint8), y=np.arange(40) % 5)
    return path


# Where a registered data set's files come from in the contract test; the others are looked for where
# their defaults say (under an empty directory here), and skipped with the module's own message.
SOURCES = {
    "npz": lambda tmp: {"path": str(write_npz(tmp))},
    "mnist": lambda tmp: {"root": str(write_mnist_raw(tmp)), "val_size": 20},
    "fashion_mnist": lambda tmp: {"root": str(write_mnist_raw(tmp, "FashionMNIST")), "val_size": 20},
    "gtsrb": lambda tmp: {"root": str(write_gtsrb(tmp)), "image_size": 16},
    "mnist10k": lambda tmp: {"root": str(T10K)},
}


@pytest.mark.parametrize("name", list_datamodules())
def test_registered_datamodule_contract(name, monkeypatch, tmp_path):
    """Every registered data module builds without touching its files, declares its shape, classes and
    normalisation, and yields float32 images in [0, 1] of that shape and labels below ``num_classes``
    from train, val and test (where its files are here: else the test is skipped, saying why)."""
    monkeypatch.chdir(tmp_path)
    dm = create_datamodule(name, batch_size=64, **SOURCES.get(name, lambda tmp: {})(tmp_path))
    assert isinstance(dm, RobustDataModule) and dm.name == name
    assert dm.num_classes >= 2 and isinstance(dm.image_size, int) and isinstance(dm.in_channels, int)
    assert len(dm.mean) == len(dm.std) == dm.in_channels
    assert all(0 < m < 1 for m in dm.mean) and all(0 < s < 1 for s in dm.std)
    try:
        dm.setup()
    except DataNotFoundError as err:
        pytest.skip(f"{name}: its files are not under {err.path}")
    shape = (dm.in_channels, dm.image_size, dm.image_size)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert_batch(x, y, shape)
        assert 0 <= int(y.min()) and int(y.max()) < dm.num_classes


def test_create_datamodule_unknown_name():
    with pytest.raises(ValueError, match="cifar10"):
        create_datamodule("imagenet")
    assert isinstance(create_datamodule("Digits", batch_size=8), Digits)


@pytest.mark.parametrize("bad", [-1, 1.0, 1.5, True, "10"])
def test_val_size_is_validated(bad):
    with pytest.raises(ValueError, match="val_size"):
        MNIST(val_size=bad)
