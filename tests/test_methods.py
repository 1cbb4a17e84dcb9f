"""Training methods: the ``loss(model, x, y) -> (loss, logs)`` contract, the TRADES and MART
formulas, the eps warm-up, argument checks, the BatchNorm/dropout mode of the training attack,
specs, and — trained for real on digits — that each adversarial method buys robustness.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import accuracy, digits, one_thread, tiny_cnn, train  # noqa: F401  (one_thread: autouse)
from torch import nn

import robust.attacks.training as training_attacks
import robust.methods.adversarial as adversarial
from robust.attacks.independent import pgd_robust_correct
from robust.base.spec import build, to_spec
from robust.base.threat import ThreatModel
from robust.methods import FGSM, MART, PGD, TRADES, Method, Standard

EPS = 0.1
THREAT = {"norm": "linf", "eps": EPS}
ADVERSARIAL = ["FGSM", "PGD", "TRADES", "MART"]
REAL_PGD = adversarial.pgd


def make(name: str, **kw) -> Method:
    """A fresh method at L-inf eps = 0.1 with 2 attack steps (where it has steps)."""
    if name == "Standard":
        return Standard()
    cls = {"FGSM": FGSM, "PGD": PGD, "TRADES": TRADES, "MART": MART}[name]
    if name != "FGSM":
        kw.setdefault("steps", 2)
    return cls(kw.pop("threat", THREAT), **kw)


@pytest.fixture(scope="module")
def batch():
    x, y = digits("train")
    return x[:32], y[:32]


def linear_model(seed: int = 0) -> nn.Module:
    """A fixed linear classifier on the 64 pixels; logits of a few units, so probabilities are
    neither 0 nor 1 and the formulas are exercised away from their stabilising constants."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.mul_(8.0)
    return model


def bn_dropout_model(seed: int = 0) -> nn.Module:
    """A model whose output depends on train/eval mode (BatchNorm and dropout)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10)
    )


class RecordingPGD:
    """Stands in for robust.methods.adversarial.pgd: records each call's arguments by name and
    returns either the real attack's output or a fixed tensor."""

    def __init__(self, fixed: torch.Tensor | None = None) -> None:
        self.calls: list[dict] = []
        self.outputs: list[torch.Tensor] = []
        self.fixed = fixed

    def __call__(self, *args, **kwargs):
        bound = inspect.signature(REAL_PGD).bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append(dict(bound.arguments))
        out = self.fixed.clone() if self.fixed is not None else REAL_PGD(*args, **kwargs)
        self.outputs.append(out)
        return out


# -- contract ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Standard", *ADVERSARIAL])
def test_loss_contract(name, batch):
    """A scalar, finite loss that backpropagates to every parameter; logs of floats or 0-dim
    tensors, with logs['loss'] the loss itself; the input batch is not modified."""
    method = make(name)
    model = tiny_cnn(seed=0).train()
    x, y = batch
    x_before = x.clone()
    torch.manual_seed(0)
    loss, logs = method.loss(model, x, y)
    assert torch.equal(x, x_before)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert isinstance(logs, dict) and logs
    for key, value in logs.items():
        assert isinstance(key, str)
        assert isinstance(value, float) or (isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad), key
        assert math.isfinite(float(value)), key
    assert float(logs["loss"]) == loss.item()
    if name == "Standard":
        assert 0.0 <= float(logs["clean_acc"]) <= 1.0
    else:
        assert 0.0 <= float(logs["adv_acc"]) <= 1.0 and logs["eps"] == EPS
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)


def test_standard_is_cross_entropy(batch):
    model = tiny_cnn(seed=0)
    x, y = batch
    loss, _ = Standard().loss(model, x, y)
    assert torch.equal(loss, F.cross_entropy(model(x), y))


# -- the objectives' formulas --------------------------------------------------------------

def test_trades_beta_zero_is_clean_cross_entropy(batch):
    """With beta = 0 TRADES is CE(f(x), y): the loss equals its natural term bit for bit, and the
    clean CE computed on its own up to float32 batching differences (1e-6)."""
    model = tiny_cnn(seed=0).train()
    x, y = batch
    torch.manual_seed(0)
    loss, logs = make("TRADES", beta=0.0).loss(model, x, y)
    assert torch.equal(loss.detach(), logs["natural_loss"])
    assert float(logs["robust_loss"]) > 0  # the attack did find a KL > 0; beta = 0 ignores it
    assert abs(loss.item() - F.cross_entropy(model(x), y).item()) < 1e-6


@pytest.fixture()
def fixed_attack(monkeypatch, batch):
    """Replace the training attack by a fixed perturbation (+-0.1 per pixel, clipped to [0, 1])."""
    x, _ = batch
    g = torch.Generator().manual_seed(3)
    x_adv = (x + EPS * torch.randn(x.shape, generator=g).sign()).clamp(0.0, 1.0)
    recorder = RecordingPGD(fixed=x_adv)
    monkeypatch.setattr(adversarial, "pgd", recorder)
    return recorder


def test_trades_matches_its_definition(batch, fixed_attack):
    """Zhang et al. 2019, eq. (5): CE(f(x), y) + beta * 1/n sum_i KL(p(x_i) || p(x'_i)),
    hand-computed in float64 on a linear model; float32 agreement within 1e-5 relative.
    The inner attack ascends the summed KL from x + 0.001 N(0, 1) against f(x)'s probabilities."""
    model = linear_model()
    x, y = batch
    beta = 6.0
    loss, logs = make("TRADES", beta=beta, steps=3).loss(model, x, y)
    x_adv = fixed_attack.fixed
    with torch.no_grad():
        p = F.softmax(model(x).double(), 1)
        q = F.softmax(model(x_adv).double(), 1)
    ce = -torch.log(p[torch.arange(len(y)), y]).mean()
    kl = (p * (p.log() - q.log())).sum(1).mean()
    expected = float(ce + beta * kl)
    assert float(kl) > 0.05  # the fixed perturbation moves the prediction (not a 0 = 0 check)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert float(logs["robust_loss"]) == pytest.approx(float(kl), rel=1e-5)
    (call,) = fixed_attack.calls
    assert call["steps"] == 3 and call["eps"] == EPS and call["step_size"] == pytest.approx(2.5 * EPS / 3)
    assert torch.allclose(call["y"], p.float(), atol=1e-6)  # attack target: f(x)'s probabilities
    assert float((call["start"] - x).abs().max()) < 0.01  # start x + 0.001 * N(0, 1)


def test_mart_matches_its_definition(batch, fixed_attack):
    """Wang et al. 2020, eq. (9), hand-computed in float64 on a linear model:
        1/n sum_i [ BCE(p(x'_i), y_i) + beta * KL(p(x_i) || p(x'_i)) * (1 - p_{y_i}(x_i)) ],
        BCE(p', y) = -log p'_y - log(1 - max_{k != y} p'_k).
    The reference code (YisenWang/MART) stabilises with log(1.0001 - p' + 1e-12), log(. + 1e-12)
    and (1.0000001 - p_y); with those constants the match is within 1e-5 relative, and they move
    the loss by less than 1e-3 relative from the exact formula here."""
    model = linear_model()
    x, y = batch
    beta = 6.0
    loss, logs = make("MART", beta=beta, steps=3).loss(model, x, y)
    x_adv = fixed_attack.fixed
    with torch.no_grad():
        p = F.softmax(model(x).double(), 1)
        q = F.softmax(model(x_adv).double(), 1)
    n = len(y)
    rows = torch.arange(n)
    q_other = q.clone()
    q_other[rows, y] = -1.0
    top_wrong = q_other.max(1).values
    p_true = p[rows, y]

    def mart(c_bce: float, tiny: float, c_w: float) -> tuple[float, float]:
        bce = -torch.log(q[rows, y]) - torch.log(c_bce - top_wrong + tiny)
        kl = (p * (torch.log(p + tiny) - torch.log(q + tiny))).sum(1)
        robust = (kl * (c_w - p_true)).mean()
        return float(bce.mean() + beta * robust), float(robust)

    exact, exact_robust = mart(1.0, 0.0, 1.0)
    reference, reference_robust = mart(1.0001, 1e-12, 1.0000001)
    assert exact_robust > 0.01  # the weighted KL term matters in this example
    assert loss.item() == pytest.approx(reference, rel=1e-5)
    assert float(logs["robust_loss"]) == pytest.approx(reference_robust, rel=1e-5)
    assert loss.item() == pytest.approx(exact, rel=1e-3)
    (call,) = fixed_attack.calls
    assert torch.equal(call["y"], y) and call["loss_fn"] is training_attacks._ce_sum  # PGD on CE
    assert call["steps"] == 3 and call["eps"] == EPS and call["step_size"] == pytest.approx(2.5 * EPS / 3)


def test_pgd_and_fgsm_attack_arguments(monkeypatch, batch):
    """PGD: steps of 2.5 * eps / steps from a random start (Madry et al.); FGSM: one step of
    1.25 * eps from a random start (Wong et al. 2020); an explicit step_size wins."""
    recorder = RecordingPGD()
    monkeypatch.setattr(adversarial, "pgd", recorder)
    model = tiny_cnn(seed=0)
    x, y = batch
    make("PGD", steps=4).loss(model, x, y)
    make("FGSM").loss(model, x, y)
    make("PGD", steps=4, step_size="1/255", random_start=False).loss(model, x, y)
    pgd4, fgsm, explicit = recorder.calls
    assert (pgd4["steps"], pgd4["step_size"], pgd4["random_start"]) == (4, pytest.approx(2.5 * EPS / 4), True)
    assert (fgsm["steps"], fgsm["step_size"], fgsm["random_start"]) == (1, pytest.approx(1.25 * EPS), True)
    assert (explicit["step_size"], explicit["random_start"]) == (pytest.approx(1 / 255), False)


# -- eps warm-up ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ADVERSARIAL)
def test_warmup(name, monkeypatch, batch):
    """warmup = 4 epochs ramps eps linearly: epoch 0 -> 0 (clean loss, no attack), epoch 1 ->
    eps / 4 (the attack stays inside eps / 4 and its step scales with it), epoch >= 4 -> eps."""
    recorder = RecordingPGD()
    monkeypatch.setattr(adversarial, "pgd", recorder)
    method = make(name, warmup=4)
    model = tiny_cnn(seed=0)
    x, y = batch

    assert method.update_schedule(0.0, 0) == 0.0 and method.current_eps == 0.0
    loss, logs = method.loss(model, x, y)
    assert recorder.calls == [] and logs["eps"] == 0.0
    clean = F.cross_entropy(model(x), y)
    if name in ("PGD", "FGSM"):
        assert torch.equal(loss, clean)
    elif name == "TRADES":  # CE on x plus beta * KL(p || p) = 0
        assert abs(loss.item() - clean.item()) < 1e-5
    else:  # MART on x' = x: its KL term vanishes
        assert abs(float(logs["robust_loss"])) < 1e-6

    assert method.update_schedule(1.0, 0) == 0.25
    assert method.current_eps == pytest.approx(EPS / 4, rel=1e-12)
    torch.manual_seed(0)
    method.loss(model, x, y)
    (call,) = recorder.calls
    assert call["eps"] == pytest.approx(EPS / 4, rel=1e-12)
    full_step = 1.25 * EPS if name == "FGSM" else 2.5 * EPS / 2
    assert call["step_size"] == pytest.approx(full_step / 4)
    assert float((recorder.outputs[0].double() - x.double()).abs().max()) <= EPS / 4 + 1e-6
    assert method.threat.eps == EPS  # the threat model keeps the full budget

    for epoch in (4.0, 10.0):
        assert method.update_schedule(epoch, 0) == 1.0 and method.current_eps == EPS


def test_warmup_in_steps_and_none():
    steps = PGD(THREAT, warmup=100, warmup_unit="steps")
    assert steps.update_schedule(7.0, 50) == 0.5 and steps.current_eps == pytest.approx(EPS / 2)
    none = PGD(THREAT)
    assert none.update_schedule(0.0, 0) == 1.0 and none.current_eps == EPS  # no warm-up: full eps at once
    assert Standard().update_schedule(0.0, 0) == 1.0 and Standard().current_eps == 0.0


# -- argument checks -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, kwargs, field",
    [
        ("PGD", {"steps": 0}, "steps"),
        ("PGD", {"steps": -3}, "steps"),
        ("PGD", {"steps": 2.5}, "steps"),
        ("PGD", {"steps": True}, "steps"),
        ("TRADES", {"steps": 0}, "steps"),
        ("MART", {"steps": 0}, "steps"),
        ("TRADES", {"beta": -1.0}, "beta"),
        ("MART", {"beta": -0.5}, "beta"),
        ("PGD", {"step_size": -0.01}, "step_size"),
        ("PGD", {"step_size": 0}, "step_size"),
        ("FGSM", {"step_size": "-2/255"}, "step_size"),
        ("TRADES", {"step_size": -0.01}, "step_size"),
        ("MART", {"step_size": float("nan")}, "step_size"),
        ("PGD", {"warmup": -1}, "warmup"),
        ("FGSM", {"warmup": -0.5}, "warmup"),
        ("TRADES", {"warmup": -1}, "warmup"),
        ("MART", {"warmup": -1}, "warmup"),
        # NaN/inf used to pass `warmup < 0` and then kept eps at 0 for the whole run (fixed in base.py)
        ("PGD", {"warmup": float("nan")}, "warmup"),
        ("MART", {"warmup": float("inf")}, "warmup"),
        ("TRADES", {"beta": float("nan")}, "beta"),
        ("MART", {"beta": float("inf")}, "beta"),
        ("PGD", {"warmup_unit": "batches"}, "warmup_unit"),
        ("PGD", {"threat": {"norm": "linf", "eps": 0}}, "eps"),
        ("TRADES", {"threat": {"norm": "l1", "eps": 0.1}}, "norm"),
        ("MART", {"threat": {"norm": "linf"}}, "eps"),
    ],
)
def test_invalid_arguments(name, kwargs, field):
    with pytest.raises(ValueError, match=field):
        make(name, **kwargs)


# -- mode of the training attack -----------------------------------------------------------

# Forward passes in order and the mode of each, for 3 attack steps (FGSM: 1), caller in train mode.
# TRADES: f(x) for the target probabilities, 3 KL steps (all eval), then separate clean and
# adversarial loss passes (train), as in the reference code.
# MART: 3 CE steps (eval), then the clean and adversarial loss passes (train). PGD/FGSM: all train.
MODES = {
    "Standard": [True],
    "FGSM": [True, True],
    "PGD": [True] * 4,
    "TRADES": [False] * 4 + [True, True],
    "MART": [False] * 3 + [True, True],
}


@pytest.mark.parametrize("name", list(MODES))
def test_attack_mode(name, batch):
    """TRADES and MART craft in eval mode (their reference code), PGD and FGSM in train mode
    (Madry et al., Wong et al.); the caller's mode is restored. Consequence checked on BatchNorm:
    its running statistics count only train-mode passes. A caller in eval mode stays in eval."""
    method = make(name, steps=3) if name not in ("Standard", "FGSM") else make(name)
    model = bn_dropout_model().train()
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
    x, y = batch
    torch.manual_seed(0)
    method.loss(model, x, y)
    assert seen == MODES[name]
    assert model.training and all(m.training for m in model.modules())
    assert int(model[2].num_batches_tracked) == sum(MODES[name])

    seen.clear()
    model.eval()
    method.loss(model, x, y)
    assert seen == [False] * len(MODES[name]) and not model.training


@pytest.mark.parametrize("name", ["TRADES", "MART"])
def test_attack_mode_restored_after_an_error(name, monkeypatch, batch):
    def broken(*args, **kwargs):
        raise RuntimeError("attack failed")

    monkeypatch.setattr(adversarial, "pgd", broken)
    model = bn_dropout_model().train()
    with pytest.raises(RuntimeError, match="attack failed"):
        make(name).loss(model, *batch)
    assert model.training


# -- specs ---------------------------------------------------------------------------------

SPEC_CASES = [
    ("Standard", {}),
    ("FGSM", {"threat": ThreatModel("linf", "8/255"), "step_size": "10/255", "warmup": 2}),
    ("PGD", {"threat": {"norm": "l2", "eps": "0.5"}, "steps": 7, "step_size": 0.1, "random_start": False,
             "warmup": 100, "warmup_unit": "steps"}),
    ("TRADES", {"threat": ThreatModel("linf", 0.3), "beta": 1.0, "steps": 40, "step_size": 0.01}),
    ("MART", {"threat": THREAT, "beta": 5.0, "steps": 3, "warmup": 1.5}),
]


@pytest.mark.parametrize("name, kwargs", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_spec_rebuilds_an_equal_method(name, kwargs, batch):
    """method._robust_spec (JSON-able) rebuilds the same class with the same attributes, which
    computes the same loss from the same seed."""
    method = make(name, **kwargs)
    spec = method._robust_spec
    assert spec["class_path"] == f"robust.methods.{name}"
    assert to_spec(method) == spec
    rebuilt = build(json.loads(json.dumps(spec)))
    assert type(rebuilt) is type(method)
    assert vars(rebuilt) == vars(method)
    assert repr(rebuilt) == repr(method)
    model = tiny_cnn(seed=0)
    x, y = batch
    torch.manual_seed(0)
    a, _ = method.loss(model, x, y)
    torch.manual_seed(0)
    b, _ = rebuilt.loss(model, x, y)
    assert torch.equal(a, b)


# -- trained for real ----------------------------------------------------------------------

TRAIN_EPOCHS = 8
TRAIN_STEPS = 5


@pytest.fixture(scope="module")
def trained():
    """CNNSmall, same init (seed 0) and same shuffle for every method, 8 epochs of Adam(1e-3),
    batch 64, L-inf eps = 0.1 with 5 attack steps; evaluated on the 300 test digits with
    torchattacks PGD-20 (step 2.5 * eps / 20, seed 0) in eval mode. About 8 s on one core.

    Observed (clean / robust), seed 0: Standard 0.933 / 0.413, FGSM 0.937 / 0.643,
    PGD 0.927 / 0.643, TRADES 0.927 / 0.707, MART 0.890 / 0.650. With seeds 1 and 2 the
    smallest margin over Standard was 14 points (FGSM, seed 1: 0.627 vs 0.487).
    """
    x, y = digits("test")
    threat = ThreatModel("linf", EPS)
    results = {}
    for name in ["Standard", *ADVERSARIAL]:
        method = Standard() if name == "Standard" else make(name, **({} if name == "FGSM" else {"steps": TRAIN_STEPS}))
        model = train(tiny_cnn(seed=0), method.loss, epochs=TRAIN_EPOCHS, seed=0, on_step=method.update_schedule)
        robust = pgd_robust_correct(model, x, y, threat, steps=20, step_size=2.5 * EPS / 20, seed=0)
        results[name] = {"clean": accuracy(model, x, y), "robust": float(robust.float().mean())}
    return results


def test_standard_training_baseline(trained):
    """The baseline learns digits (clean > 0.85; observed 0.933) and is partly broken at eps = 0.1
    (observed 0.413), leaving room for the 10-point margin below."""
    assert trained["Standard"]["clean"] > 0.85
    assert trained["Standard"]["robust"] < 0.6


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_training_beats_standard(name, trained):
    """Each method's PGD-20 robust accuracy beats Standard's by >= 10 points (observed margins:
    FGSM +23, PGD +23, TRADES +29, MART +24) while clean accuracy stays > 0.85 (observed >= 0.89)."""
    assert trained[name]["robust"] >= trained["Standard"]["robust"] + 0.10, trained
    assert trained[name]["clean"] > 0.85, trained
