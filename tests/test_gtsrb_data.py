"""GTSRB from an offline copy (train.npz/test.npz) and torchvision's files: splits by track, held-out
tracks for physical evaluation, statistics of the copy in use, clear errors. The real copy in
``../shared/data/gtsrb`` is checked where it exists (skipped cleanly elsewhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robust.base.classes import class_metadata, list_class_metadata
from robust.data import GTSRB, DataFormatError, DataNotFoundError, split_tracks
from robust.data.gtsrb import default_gtsrb_root, read_gtsrb

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "gtsrb"


def write_copy(root: Path, classes: int = 3, tracks: int = 10, frames: int = 30, size: int = 32) -> Path:
    """An offline copy in the shared layout: ``classes`` x ``tracks`` x ``frames`` training images whose
    pixels encode (class, track), and 2 test images per class."""
    root.mkdir(parents=True, exist_ok=True)
    y = np.repeat(np.arange(classes), tracks * frames).astype(np.uint8)
    track = np.repeat(np.arange(classes * tracks), frames).astype(np.int32)
    x = np.zeros((len(y), size, size, 3), dtype=np.uint8)
    x[..., 0] = (40 * y)[:, None, None]
    x[..., 1] = track[:, None, None] % 256
    np.savez(root / "train.npz", x=x, y=y, track=track)
    yt = np.repeat(np.arange(classes), 2).astype(np.uint8)
    np.savez(root / "test.npz", x=np.full((len(yt), size, size, 3), 200, np.uint8), y=yt)
    return root


def test_offline_copy_splits_whole_tracks_and_holds_tracks_of_every_class_out(tmp_path):
    dm = GTSRB(root=str(write_copy(tmp_path / "g")), holdout_tracks=0.2, val_size=0.1)
    assert dm.offline and "offline copy" in dm.source
    sizes = dm.split_sizes()
    # 3 classes x 10 tracks x 30 frames = 900; 2 of each class's 10 tracks held out = 180 images;
    # val: whole tracks until >= 10% of the 720 remaining (72) = 3 tracks of 30 = 90 images
    assert sizes == {"train": 630, "val": 90, "test": 6}
    x_held, y_held, t_held = dm.held_out()
    assert len(y_held) == 180 and torch.bincount(y_held).tolist() == [60, 60, 60]
    track_of = lambda x: set((x[:, 1, 0, 0] * 255).round().long().tolist())  # noqa: E731 - pixel encodes track
    train, val = track_of(dm.train_tensors()[0]), track_of(dm.val_tensors()[0])
    held = set(t_held.tolist())
    assert held == track_of(x_held) and not (train & val) and not (train & held) and not (val & held)
    assert x_held.dtype == torch.float32 and 0 <= x_held.min() and x_held.max() <= 1


def test_statistics_come_from_the_copy_in_use(tmp_path):
    dm = GTSRB(root=str(write_copy(tmp_path / "g", classes=2)))
    # red channel: half the images at 0, half at 40/255 -> mean 20/255, std 20/255
    assert dm.mean[0] == pytest.approx(20 / 255, abs=1e-4) and dm.std[0] == pytest.approx(20 / 255, abs=1e-4)
    assert dm.mean[2] == 0 and dm.std[2] == pytest.approx(1e-3)  # blue is constant: std floored


def test_split_tracks_is_fixed_and_per_class():
    y = torch.arange(4).repeat_interleave(50)
    track = torch.arange(40).repeat_interleave(5)
    keep, held = split_tracks(track, y, 0.2)
    assert torch.equal(held, split_tracks(track, y, 0.2)[1])
    assert torch.bincount(y[held]).tolist() == [10, 10, 10, 10]  # 2 of the 10 tracks of every class
    assert len(set(track[keep].tolist()) & set(track[held].tolist())) == 0
    with pytest.raises(ValueError, match="holdout_tracks"):
        split_tracks(track, y, 1.0)


def test_held_out_needs_a_holdout(tmp_path):
    with pytest.raises(ValueError, match="holdout_tracks > 0"):
        GTSRB(root=str(write_copy(tmp_path / "g"))).held_out()


@pytest.mark.parametrize("bad", [-0.1, 1.0, True, "0.1"])
def test_holdout_tracks_is_validated(bad):
    with pytest.raises(ValueError, match="holdout_tracks"):
        GTSRB(holdout_tracks=bad)


def test_broken_copies_are_named(tmp_path):
    root = write_copy(tmp_path / "g", size=16)
    with pytest.raises(DataFormatError, match="image_size=16"):
        GTSRB(root=str(root)).setup("fit")
    np.savez(root / "train.npz", x=np.zeros((4, 16, 16, 3), np.uint8), y=np.zeros(4, np.uint8))
    with pytest.raises(DataFormatError, match="track id"):
        read_gtsrb(root, "train")
    (root / "test.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="test.npz: not a readable"):
        read_gtsrb(root, "test")
    with pytest.raises(DataNotFoundError, match="nowhere"):
        read_gtsrb(tmp_path / "nowhere", "test")


def test_class_metadata_contract():
    """Every registered metadata names its classes once, its groups partition ids and its safety classes exist."""
    assert "gtsrb" in list_class_metadata()
    for name in list_class_metadata():
        meta = class_metadata(name)
        assert len(set(meta.names)) == meta.num_classes
        grouped = [i for ids in meta.groups.values() for i in ids]
        assert len(grouped) == len(set(grouped)) and all(0 <= i < meta.num_classes for i in grouped)
    gtsrb = class_metadata("GTSRB")
    assert gtsrb.num_classes == 43 and gtsrb.name(14) == "stop" and gtsrb.safety[0] == 14
    assert gtsrb.groups["speed_limit"] == (0, 1, 2, 3, 4, 5, 7, 8) and gtsrb.group_of(13) == "priority"
    assert gtsrb.index("Yield") == 13 and class_metadata("digits") is None


needs_real = pytest.mark.skipif(not (REAL / "train.npz").is_file(), reason=f"no GTSRB copy at {REAL}")


@needs_real
def test_real_copy_counts_and_tracks():
    x, y, track = read_gtsrb(REAL, "train")
    assert x.shape == (39209, 3, 32, 32) and len(track.unique()) == 1307
    xt, yt, _ = read_gtsrb(REAL, "test")
    assert len(yt) == 12630 and int((yt == 14).sum()) == 270  # the official test set has 270 stop signs
    dm = GTSRB(root=str(REAL), holdout_tracks=0.1)
    dm.setup("fit")
    _, y_held, t_held = dm.held_out()
    assert len(t_held.unique()) == 133 and set(y_held.tolist()) == set(range(43))  # >= 1 track of every class
    _, y_val = dm.val_tensors()
    assert len(set(y_val[:1000].tolist())) >= 30  # shuffled: the first 1,000 span the classes (sorted: 7)


def test_default_root_is_found_only_where_the_copy_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_gtsrb_root() is None
