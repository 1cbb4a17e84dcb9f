"""Randomized smoothing (Cohen et al. 2019): the Clopper-Pearson bound, soundness of the radius
against a linear classifier whose smoothed probabilities are known in closed form, fresh noise,
abstention, RNG and mode hygiene, resumable dataset certification, and Gaussian-noise training.

Statistical checks use fixed seeds and state their false-alarm rate: a bound ``k`` with
``P(Binomial(m, p) >= k) <= 1e-4`` for the guaranteed failure probability ``p``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from _helpers import digits, one_thread, tiny_cnn, train  # noqa: F401  (one_thread: autouse)
from scipy.stats import binom, binomtest, norm
from torch import nn

from robust.base.spec import to_spec
from robust.base.state import read_journal
from robust.certify.smoothing import ABSTAIN, Smooth, certify_dataset, lower_confidence_bound, max_certifiable_radius
from robust.methods.noise import GaussianNoise

FALSE_ALARM = 1e-4
SIGMA = 0.25
SHAPE = (1, 4, 4)


def failure_bound(m: int, p: float) -> int:
    """Smallest k with P(Binomial(m, p) >= k) <= FALSE_ALARM: more failures than this are a bug."""
    return int(binom.isf(FALSE_ALARM, m, p)) + 1


class Linear(nn.Module):
    """f(x) = 1[w.x + b > 0] as two logits; the boundary passes through the grey image."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(math.prod(SHAPE), generator=g))
        self.b = nn.Parameter(-0.5 * self.w.detach().sum())

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.margin(x)
        return torch.stack([-m, m], 1)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        return self.margin(x).abs() / self.w.norm()


def points(count: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, *SHAPE, generator=torch.Generator().manual_seed(seed))


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return torch.zeros(len(x), 3)


class Coin(nn.Module):
    """A base classifier that answers class 0 or 1 at random: the smoothed classes tie."""

    def __init__(self) -> None:
        super().__init__()
        self.g = torch.Generator().manual_seed(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(x), 2, generator=self.g)


@pytest.mark.parametrize("k,n,alpha", [(0, 10, 0.01), (1, 10, 0.05), (57, 100, 0.001), (9990, 10_000, 0.001),
                                       (100, 100, 0.001)])
def test_lower_bound_is_scipy_exact(k, n, alpha):
    expected = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert lower_confidence_bound(k, n, alpha) == pytest.approx(expected, abs=1e-12)
    top = SIGMA * norm.ppf(lower_confidence_bound(n, n, alpha))
    assert max_certifiable_radius(SIGMA, n, alpha) == pytest.approx(top)


def test_max_certifiable_radius_matches_paper():
    assert max_certifiable_radius(1.0, 10_000, 0.001) == pytest.approx(3.2, abs=0.05)


def certify_all(model: Linear, x: torch.Tensor, n: int, alpha: float, seed: int = 0):
    smooth = Smooth(model, 2, SIGMA, seed=seed)
    return [smooth.certify(xi, n0=100, n=n, alpha=alpha, batch_size=n) for xi in x]


def test_radius_is_sound_and_tightens_with_n():
    model, x, alpha = Linear(), points(200), 0.01
    with torch.no_grad():
        truth, distance = (model.margin(x) > 0).long(), model.distance(x)
    gaps = {}
    for n in (2000, 20_000):
        results = certify_all(model, x, n, alpha)
        failures = sum(c != ABSTAIN and (c != int(t) or r > float(d)) for (c, r), t, d in zip(results, truth, distance))
        assert failures < failure_bound(len(x), alpha)
        gaps[n] = float(sum(float(d) - r for (_, r), d in zip(results, distance))) / len(x)
    assert 0 < gaps[20_000] < gaps[2000]


def test_pa_matches_closed_form():
    model, x = Linear(), points(5, seed=7)
    smooth = Smooth(model, 2, SIGMA, seed=0)
    n = 20_000
    for xi in x:
        with torch.no_grad():
            margin = float(model.margin(xi[None]))
        p_true = norm.cdf(abs(margin) / (SIGMA * float(model.w.detach().norm())))
        counts = smooth._counts(xi, n, 5000, None)
        p_hat = float(counts[int(margin > 0)]) / n
        assert abs(p_hat - p_true) < 5 * math.sqrt(p_true * (1 - p_true) / n) + 1e-3


def test_fresh_noise_per_sample():
    model = Recorder()
    smooth = Smooth(model, 3, SIGMA, seed=0)
    x = torch.full(SHAPE, 0.5)
    smooth.certify(x, n0=10, n=25, alpha=0.01, batch_size=7)
    assert [len(b) for b in model.inputs] == [7, 3, 7, 7, 7, 4]
    samples = torch.cat(model.inputs).flatten(1)
    assert len(torch.unique(samples, dim=0)) == 35
    selection, estimation = samples[:10], samples[10:]
    assert not any(bool((selection == e).all(1).any()) for e in estimation)
    noise = samples - x.flatten()
    assert noise.std().item() == pytest.approx(SIGMA, rel=0.2)


def test_certificate_survives_attack():
    model, x, alpha = Linear(seed=2), points(150, seed=4), 0.01
    smooth = Smooth(model, 2, SIGMA, seed=5)
    direction = model.w.detach() / model.w.detach().norm()
    changed = attacked = 0
    for xi in x:
        c, radius = smooth.certify(xi, n0=100, n=2000, alpha=alpha, batch_size=2000)
        if c == ABSTAIN:
            continue
        toward = -1.0 if c == 1 else 1.0
        x_adv = (xi + toward * 0.99 * radius * direction.view(SHAPE)).clamp(0, 1)
        assert float((x_adv - xi).norm()) < radius
        prediction = smooth.predict(x_adv, n=2000, alpha=alpha, batch_size=2000)
        changed += prediction not in (ABSTAIN, c)
        attacked += 1
    assert attacked > 50
    assert changed < failure_bound(attacked, 2 * alpha)


def test_abstains_on_a_tie():
    smooth = Smooth(Coin(), 2, SIGMA, seed=0)
    x = torch.full(SHAPE, 0.5)
    assert smooth.predict(x, n=1000, alpha=0.001, batch_size=500) == ABSTAIN
    assert smooth.certify(x[None], n0=100, n=1000, alpha=0.001, batch_size=500) == (ABSTAIN, 0.0)


def test_modes_rng_and_reproducibility():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[2].eval()
    x = points(1)[0]
    state = torch.get_rng_state()
    first = Smooth(model, 3, SIGMA, seed=11).certify(x, n0=20, n=200, alpha=0.01, batch_size=64)
    second = Smooth(model, 3, SIGMA, generator=torch.Generator().manual_seed(11)).certify(
        x, n0=20, n=200, alpha=0.01, batch_size=64)
    assert first == second
    assert torch.equal(torch.get_rng_state(), state)
    assert [m.training for m in model.modules()] == [True, True, True, False, True]


@pytest.mark.parametrize("kwargs,field", [
    ({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"), ({"sigma": float("nan")}, "sigma"),
    ({"num_classes": 1}, "num_classes"), ({"n": 0}, "n must"), ({"n0": 0}, "n0"),
    ({"alpha": 0.0}, "alpha"), ({"alpha": 1.0}, "alpha"), ({"batch_size": 0}, "batch_size"),
    ({"x": torch.full(SHAPE, 1.5)}, "[0, 1]"), ({"x": torch.rand(2, *SHAPE)}, "one image"),
])
def test_bad_inputs(kwargs, field):
    build = {"num_classes": 2, "sigma": SIGMA}
    call = {"x": torch.rand(SHAPE), "n0": 10, "n": 10, "alpha": 0.01, "batch_size": 10}
    for key, value in kwargs.items():
        (build if key in build else call)[key] = value
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        Smooth(Linear(), **build).certify(**call)


def test_certify_dataset_metrics_and_resume(tmp_path):
    model, x = Linear(), points(30, seed=9)
    with torch.no_grad():
        y = (model.margin(x) > 0).long()
    y[:3] = 1 - y[:3]
    args = dict(n0=20, n=200, alpha=0.01, batch_size=100, radii=(0, 0.1, 0.2), progress=False)
    full = certify_dataset(Smooth(model, 2, SIGMA, seed=0), x, y, state_path=tmp_path / "a.jsonl", **args)

    rows = full["rows"]
    assert [r["idx"] for r in rows] == list(range(30))
    assert set(rows[0]) == {"idx", "label", "predict", "radius", "correct", "time"}
    correct = [r["predict"] == r["label"] for r in rows]
    assert full["certified_accuracy"][0.0]["correct"] == sum(correct)
    assert full["certified_accuracy"][0.0]["n"] == 30
    assert full["acr"] == pytest.approx(sum(r["radius"] for r, c in zip(rows, correct) if c) / 30)
    assert full["abstention_rate"] == pytest.approx(sum(r["predict"] == ABSTAIN for r in rows) / 30)
    accs = [full["certified_accuracy"][r]["accuracy"] for r in (0.0, 0.1, 0.2)]
    assert accs == sorted(accs, reverse=True) and accs[0] > 0.5
    assert full["warnings"] == []

    state = tmp_path / "b.jsonl"

    def stop(row):
        if row["idx"] == 11:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        certify_dataset(Smooth(model, 2, SIGMA, seed=0), x, y, state_path=state, callback=stop, **args)
    assert sorted(read_journal(state)[1]) == list(range(12))  # one journal frame per finished example
    with open(state, "ab") as handle:  # a kill in the middle of appending the next frame
        handle.write((1000).to_bytes(8, "little") + b"only part of a frame")
    seen = []
    resumed = certify_dataset(Smooth(model, 2, SIGMA, seed=0), x, y, state_path=state,
                              callback=lambda row: seen.append(row["idx"]), **args)
    assert seen == list(range(12, 30))
    again = certify_dataset(Smooth(model, 2, SIGMA, seed=0), x, y, state_path=state, callback=seen.append, **args)
    assert len(seen) == 18 and again["rows"] == resumed["rows"]

    def strip(result):
        return [{k: v for k, v in r.items() if k != "time"} for r in result["rows"]]

    assert strip(resumed) == strip(full)
    assert resumed["certified_accuracy"] == full["certified_accuracy"]
    assert resumed["acr"] == full["acr"]
    json.dumps(resumed)

    with pytest.raises(ValueError, match="alpha"):
        certify_dataset(Smooth(model, 2, SIGMA, seed=0), x, y, state_path=state, **{**args, "alpha": 0.02})
    with pytest.raises(ValueError, match="data"):
        certify_dataset(Smooth(model, 2, SIGMA, seed=0), x, 1 - y, state_path=state, **args)


def test_certify_dataset_warns_beyond_max_radius():
    model, x = Linear(), points(2)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.warns(UserWarning, match="maximum certifiable"):
        result = certify_dataset(Smooth(model, 2, SIGMA, seed=0), x, y, n0=10, n=50, alpha=0.01,
                                 batch_size=50, radii=(0, 5.0), progress=False)
    assert result["warnings"] and result["certified_accuracy"][5.0]["correct"] == 0


def test_gaussian_noise_loss():
    x, y = digits("train")
    x, y = x[:16], y[:16]
    method = GaussianNoise(0.25)
    assert to_spec(method) == {"class_path": "robust.methods.GaussianNoise", "init_args": {"sigma": 0.25}}
    model = tiny_cnn()
    loss, logs = method.loss(model, x, y)
    assert torch.isfinite(loss) and set(logs) >= {"loss", "noisy_acc"}
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    for bad in (0, -0.1, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="sigma"):
            GaussianNoise(bad)


def test_noise_training_certifies_digits():
    model = train(tiny_cnn(), loss_fn=GaussianNoise(SIGMA).loss, epochs=15)
    x, y = digits("test")
    result = certify_dataset(Smooth(model, 10, SIGMA, seed=0), x[:60], y[:60], n0=50, n=500, alpha=0.001,
                             batch_size=500, radii=(0, 0.1, 0.25), progress=False)
    assert result["certified_accuracy"][0.1]["accuracy"] > 0.5
    assert result["acr"] > 0.1


@pytest.mark.gpu
def test_certify_on_cuda_with_autocast_is_sound():
    # bf16 autocast and noise drawn on the GPU: still sound within the alpha bound, and the
    # certified classes agree with the CPU's on nearly every point (radii differ by sampling).
    model, x, alpha = Linear().cuda(), points(200).cuda(), 0.01
    with torch.no_grad():
        truth, distance = (model.margin(x) > 0).long(), model.distance(x)
    results = certify_all(model, x, 2000, alpha)
    failures = sum(c != ABSTAIN and (c != int(t) or r > float(d)) for (c, r), t, d in zip(results, truth, distance))
    assert failures < failure_bound(len(x), alpha)
    cpu = certify_all(Linear(), points(200), 2000, alpha)
    same = sum(a[0] == b[0] for a, b in zip(results, cpu)) / len(cpu)
    assert same >= 0.9
