"""Built the legacy fixtures with the code of commit 3c85879 (before the package layout of issue 13):
a PGD-trained CNN-small checkpoint on digits, a leaderboard database with report and RobustBench
entries, and what they gave then (logits, hyperparameters, ranked boards). Kept to show how they were
made; run from a checkout of that commit."""
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _helpers import fit_checkpoint

from robust.cli import main
from robust.data import Digits
from robust.leaderboard import Store, boards, from_report, from_robustbench
from robust.methods import PGD
from robust.module import RobustClassifier
from robust.threat import ThreatModel

out = Path(__file__).resolve().parent; out.mkdir(parents=True, exist_ok=True)
import tempfile; tmp = Path(tempfile.mkdtemp()); shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
dm = Digits(batch_size=64)
ckpt = fit_checkpoint(PGD(ThreatModel("linf", "8/255"), steps=3), dm, out / "pgd_cnn_small_digits.ckpt", epochs=1)
(out / "pgd_cnn_small_digits.pt").unlink()
m = RobustClassifier.load_from_checkpoint(out / "pgd_cnn_small_digits.ckpt", map_location="cpu")
dm.setup("test"); x, y = dm.test_tensors()
with torch.no_grad():
    logits = m.model.eval()(x[:16])
common = ["--checkpoint", str(out / "pgd_cnn_small_digits.ckpt"), "--data", "digits", "--n-examples", "40", "--no-progress"]
assert main(["evaluate", *common, "--attacks", "pgd", "--attack-options", '{"pgd": {"steps": 5}}', "--no-audit", "--out", str(tmp / "eval")]) == 0
assert main(["certify", "--method", "ibp", *common, "--eps", "0.02", "--attack", "none", "--out", str(tmp / "cert")]) == 0
db = out / "leaderboard.db"
db.unlink(missing_ok=True)
store = Store(str(db))
ev = json.loads((tmp / "eval/report.json").read_text()); ce = json.loads((tmp / "cert/report.json").read_text())
store.add(from_report(ev, name="legacy PGD CNN-small")); store.add(from_report(ce, name="legacy PGD CNN-small IBP"))
GOWAL = {"link": "https://arxiv.org/abs/2010.03593", "name": "Gowal2020Uncovering_28_10_extra", "authors": "Gowal et al.",
 "additional_data": True, "number_forward_passes": 1, "dataset": "cifar10", "venue": "arXiv, Oct 2020",
 "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69", "reported": "62.76",
 "autoattack_acc": "59.53", "external": "", "unreliable": False, "footnote": ""}
for name, clean, aa in (("Gowal2020Uncovering_28_10_extra", "89.69", "59.53"), ("Rebuffi2021Fixing_70_16", "92.23", "66.56"),
                        ("Carmon2019Unlabeled", "89.69", "59.53"), ("Zhang2019Theoretically", "84.92", "53.08")):
    store.add(from_robustbench({**GOWAL, "name": name, "clean_acc": clean, "autoattack_acc": aa}, threat="Linf"))
entries = store.entries()
(out / "expected.json").write_text(json.dumps({
    "logits_first16": logits.tolist(), "labels_first16": y[:16].tolist(),
    "hyper_parameters": {k: v for k, v in torch.load(out / "pgd_cnn_small_digits.ckpt", weights_only=True)["hyper_parameters"].items()},
    "boards": boards(entries)}, indent=1, default=str) + "\n")
print(db.stat().st_size, (out / "pgd_cnn_small_digits.ckpt").stat().st_size)
