"""Offline wandb logging from Lightning, read back from the run's .wandb log."""

import struct

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robust.tracking import WandbLogger, read_wandb_records, read_wandb_run, wandb_logger, wandb_mode

_CLEAR = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "NETRC")


class Tiny(pl.LightningModule):
    def __init__(self, lr: float = 0.125, width: int = 3, notes: str = ""):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(width, 2)
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.losses.append(loss.item())
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", 0.125 + self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """An isolated offline wandb: no user settings, runs under tmp_path (which is also the cwd)."""
    for var in _CLEAR:
        monkeypatch.delenv(var, raising=False)
    for var, value in (("HOME", str(tmp_path)), ("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path)),
                       ("WANDB_SILENT", "true")):
        monkeypatch.setenv(var, value)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch offline run (2 steps/epoch); yields (module, run_dir)."""
    tmp = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        for var in _CLEAR:
            mp.delenv(var, raising=False)
        mp.setenv("HOME", str(tmp))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(tmp))
        mp.setenv("WANDB_SILENT", "true")
        mp.chdir(tmp)
        torch.manual_seed(0)
        data = TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
        logger = wandb_logger(project="robust-test", save_dir=tmp)
        model = Tiny(notes="n" * 40_000)  # config record larger than a 32 KiB block
        trainer = pl.Trainer(
            logger=logger, max_epochs=2, enable_checkpointing=False, log_every_n_steps=1, accelerator="cpu",
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )
        trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
        run_dir = logger.finish()  # wandb.finish() alone may leave the log's last block unwritten
    yield model, run_dir


def test_run_round_trips_metrics_and_hparams(trained):
    model, run_dir = trained
    assert sorted(run_dir.glob("run-*.wandb")) and run_dir.name.startswith("offline-run-")
    run = read_wandb_run(run_dir)
    assert run.project == "robust-test" and run.run_id and run_dir.name.endswith(run.run_id)
    assert run.config["lr"] == 0.125 and run.config["width"] == 3 and run.config["notes"] == "n" * 40_000

    train = [row for row in run.history if "train/loss" in row]
    assert [row["train/loss"] for row in train] == model.losses and len(model.losses) == 4
    assert [row["trainer/global_step"] for row in train] == [0, 1, 2, 3]
    val = [row for row in run.history if "val/acc" in row]
    assert [row["val/acc"] for row in val] == [0.125, 1.125]
    assert [row["epoch"] for row in val] == [0, 1]
    assert run.summary["val/acc"] == 1.125 and run.summary["train/loss"] == model.losses[-1]


def test_reader_rejects_non_wandb_and_damaged_files(trained, tmp_path):
    (log,) = trained[1].glob("run-*.wandb")
    data = log.read_bytes()
    assert data[:7] == b":W&B" + struct.pack("<HB", 0xBEE1, 0)
    assert len(data) > 32768  # spans blocks, so FIRST/MIDDLE/LAST chunks were reassembled above
    assert list(read_wandb_records(log))[-1].WhichOneof("record_type") == "exit"

    bogus = tmp_path / "bogus.wandb"
    bogus.write_bytes(b"SQLite format 3\x00" + bytes(100))
    with pytest.raises(ValueError, match=r"bogus\.wandb: not a wandb run log"):
        list(read_wandb_records(bogus))

    cut = tmp_path / "cut.wandb"
    cut.write_bytes(data[:2000])
    with pytest.raises(ValueError, match=r"cut\.wandb: truncated record at offset \d+"):
        list(read_wandb_records(cut))

    flipped = bytearray(data)
    flipped[20] ^= 0xFF  # inside the first record's payload
    bad = tmp_path / "bad.wandb"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"bad\.wandb: checksum mismatch in record at offset 7"):
        list(read_wandb_records(bad))


def test_offline_unless_configured_online(monkeypatch, tmp_path):
    for var in _CLEAR:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert wandb_mode() == "offline"
    logger = WandbLogger(save_dir=tmp_path)
    assert logger.mode == "offline" and logger.run_dir is None  # no run started yet
    assert WandbLogger(save_dir=tmp_path, offline=False).mode == "online"

    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbLogger(save_dir=tmp_path).mode == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() == "online"


def test_checkpoints_become_a_model_artifact_offline(offline_wandb):
    tmp_path = offline_wandb
    data = TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    logger = wandb_logger(project="robust-test", save_dir=tmp_path)
    trainer = pl.Trainer(logger=logger, max_epochs=1, accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(Tiny(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    run_dir = logger.finish()
    run = read_wandb_run(run_dir)
    log = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert f"model-{run.run_id}".encode() in log  # Lightning's artifact name for the run's checkpoints
    assert b'"original_filename":"epoch=0-step=2.ckpt"' in log


class Accuracies(Tiny):
    def validation_step(self, batch, batch_idx):
        self.log("val/clean_acc", 0.5 + 0.25 * self.current_epoch)
        self.log("val/robust_acc", 0.25 * self.current_epoch)

    def test_step(self, batch, batch_idx):
        self.log("test/clean_acc", 0.75)


def test_results_table_and_curves_reach_the_run(offline_wandb):
    from robust.callbacks import WandbResults

    tmp_path = offline_wandb
    data = DataLoader(TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,))), batch_size=4)
    logger = wandb_logger(project="robust-test", save_dir=tmp_path, log_model=False)
    results = WandbResults()
    trainer = pl.Trainer(logger=logger, max_epochs=2, accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, enable_checkpointing=False,
                         callbacks=[results])
    model = Accuracies()
    trainer.fit(model, data, data)
    trainer.test(model, data, verbose=False)
    run = read_wandb_run(logger.finish())
    assert results.rows == [{"epoch": 0, "clean_acc": 0.5, "robust_acc": 0.0},
                            {"epoch": 1, "clean_acc": 0.75, "robust_acc": 0.25}]
    logged = {k: v for row in run.history for k, v in row.items() if k.startswith("results/")}
    assert logged["results/validation/_type"] == "table-file" and logged["results/validation/nrows"] == 2
    assert logged["results/validation/ncols"] == 3  # epoch, clean_acc, robust_acc
    assert logged["results/accuracy_curves/_type"] == "image-file"
    assert logged["results/test/_type"] == "table-file" and logged["results/test/nrows"] == 1

    quiet = WandbResults()  # without a wandb logger it does nothing
    pl.Trainer(logger=False, max_epochs=1, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
               num_sanity_val_steps=0, enable_checkpointing=False, callbacks=[quiet]).fit(Accuracies(), data, data)
    assert quiet.rows == []
