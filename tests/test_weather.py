"""Driving weather and light (robust.evaluation.weather): deterministic from the seed, independent of the
batch, stronger at higher severity, in range, on RGB 32x32 signs and 8x8 grayscale digits; the evaluation's
records; the ``--weather`` flag of ``robust evaluate`` and ``robust audit``; the preview grid."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _helpers import one_thread, tiny_cnn, train  # noqa: F401 (one_thread: an autouse fixture)
from torch import nn

from robust.evaluation.weather import SEVERITIES, WEATHER, WeatherError, evaluate_weather, weather

PNG = b"\x89PNG\r\n\x1a\n"


def signs(n: int = 12, side: int = 32, seed: int = 0) -> torch.Tensor:
    """``n`` sign-like RGB images: a sky-to-road gradient behind a red-rimmed white disc with a dark bar,
    at a random centre, radius and hue of the background, as float32 (n, 3, side, side) 8-bit levels k / 255."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    out = []
    for _ in range(n):
        sky = torch.rand(3, generator=g) * 0.5 + 0.3
        img = sky[:, None, None] * (1 - 0.5 * yy / side)[None]
        cy, cx = (side / 2 + (torch.rand(2, generator=g) - 0.5) * side / 4).tolist()
        r = side * (0.3 + 0.1 * float(torch.rand(1, generator=g)))
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        img = torch.where((d < r)[None], torch.tensor([0.75, 0.1, 0.12])[:, None, None], img)
        img = torch.where((d < 0.75 * r)[None], torch.full((3, 1, 1), 0.95), img)
        bar = ((yy - cy).abs() < 0.15 * r) & ((xx - cx).abs() < 0.5 * r)
        img = torch.where(bar[None], torch.full((3, 1, 1), 0.1), img)
        out.append(img)
    return torch.round(torch.stack(out).clamp(0, 1) * 255).float() / 255


def test_weather_keeps_shape_dtype_range_and_8_bit_levels():
    x = signs(3)
    for name in WEATHER:
        for s in (1, 5):
            out = weather(x, name, s)
            assert out.shape == x.shape and out.dtype == torch.float32, (name, s)
            assert 0 <= float(out.min()) and float(out.max()) <= 1, (name, s)
            assert torch.allclose(out * 255, torch.round(out * 255), atol=1e-3), (name, s)  # k / 255 values
    assert weather(x.double(), "rain", 2).dtype == torch.float64
    assert weather(x[:0], "fog", 3).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("name", WEATHER)
def test_same_seed_same_images_other_seed_other_images(name):
    x = signs(4)
    a, b = weather(x, name, 3, seed=7), weather(x, name, 3, seed=7)
    assert torch.equal(a, b)
    c = weather(x, name, 3, seed=8)  # each of the six draws at random (drops, flakes, particles, sun, polygons, noise)
    assert all(not torch.equal(a[i], c[i]) for i in range(len(x)))


@pytest.mark.parametrize("name", WEATHER)
def test_an_image_gets_the_same_weather_in_any_batch(name):
    x = signs(6)
    whole = weather(x, name, 4, seed=3)
    parts = torch.cat([weather(x[:1], name, 4, seed=3), weather(x[1:4], name, 4, seed=3, start=1),
                       weather(x[4:], name, 4, seed=3, start=4)])
    assert torch.equal(whole, parts)
    alone = weather(x[2:3], name, 4, seed=3, start=2)  # the other images do not matter
    assert torch.equal(alone[0], whole[2])


def test_higher_severity_changes_the_images_more():
    """Mean absolute change over 16 sign-like images, each severity above the one before (in expectation the
    tables are monotone: more drops, flakes, fog, a larger and brighter sun, darker shadows, less light)."""
    x = signs(16, seed=1)
    for name in WEATHER:
        change = [float((weather(x, name, s) - x).abs().mean()) for s in SEVERITIES]
        assert all(b > a for a, b in zip(change, change[1:])), (name, [round(c, 4) for c in change])
        assert change[0] > 0.003 and change[-1] > 2 * change[0], (name, change)


def test_grayscale_is_the_luminance_of_the_stacked_rgb_result():
    """On 8x8 one-channel images (the embedded digits' size) every weather but night equals, to one 8-bit
    level, the luminance of the same weather on the gray image stacked to RGB (the same draws)."""
    gray = signs(5, side=8, seed=2).mean(1, keepdim=True)
    for name in WEATHER:
        out = weather(gray, name, 5, seed=1)
        assert out.shape == (5, 1, 8, 8) and 0 <= float(out.min()) and float(out.max()) <= 1
        assert not torch.equal(out, gray), name
        if name != "night":  # night's noise is per channel on RGB, shared on gray
            rgb = weather(gray.expand(-1, 3, -1, -1).contiguous(), name, 5, seed=1)
            lum = (rgb * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True)
            assert (out - lum).abs().max() <= 1.5 / 255, name


def test_shadow_only_darkens_flare_only_brightens_night_darkens_on_average():
    x = signs(6, seed=3)
    shadow, flare, night = weather(x, "shadow", 5), weather(x, "flare", 5), weather(x, "night", 5)
    assert bool((shadow <= x + 1e-6).all()) and bool((shadow == x).any())  # outside the polygons: exact
    assert bool((flare >= x - 1e-6).all())  # screen blending never darkens
    # exposure 0.3 after gamma 1.5: the mean falls to well under half
    assert float(night.mean()) < 0.5 * float(x.mean())


@pytest.mark.parametrize("call, message", [
    (lambda x: weather(x, "hail", 1), "unknown weather 'hail'"),
    (lambda x: weather(x, "rain", 0), "severity must be an integer in 1..5, got 0"),
    (lambda x: weather(x, "rain", 6), "got 6"),
    (lambda x: weather(x, "rain", 2.0), "got 2.0"),
    (lambda x: weather(x, "rain", True), "got True"),
    (lambda x: weather(x, "rain", 1, seed=-1), "seed must be a non-negative integer, got -1"),
    (lambda x: weather(x * 2, "rain", 1), "images must lie in [0, 1]"),
    (lambda x: weather(x[:, :2], "rain", 1), "must have 1 or 3 channels"),
    (lambda x: weather(x[:, :, :4, :4], "rain", 1), "at least 8x8"),
    (lambda x: evaluate_weather(nn.Flatten(), (x, torch.zeros(2, dtype=torch.long)), names=["fog", "fog"]),
     "repeated"),
    (lambda x: evaluate_weather(nn.Flatten(), (x, torch.zeros(2, dtype=torch.long)), severities=[7]), "got 7"),
])
def test_bad_input_is_named_in_one_line(call, message):
    with pytest.raises(ValueError) as err:
        call(signs(2))
    assert message in str(err.value) and "\n" not in str(err.value)
    if "weather" in message or "severity" in message or "seed" in message:
        assert isinstance(err.value, WeatherError)


class Brightness(nn.Module):
    """Class 1 when the mean of the image is above 0.45, else class 0: weather moves it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.45 - m, m - 0.45], 1)


def test_evaluate_weather_records_are_consistent_and_batch_free():
    x = signs(10, seed=4)
    model = Brightness()
    y = model(x).argmax(1)  # every clean image right
    y[:3] = 1 - y[:3]  # and three wrong
    model.train()
    a = evaluate_weather(model, (x, y), severities=(1, 5), batch_size=3, seed=2, progress=False)
    assert model.training  # put back in its mode
    b = evaluate_weather(model, (x, y), severities=(1, 5), batch_size=64, seed=2, progress=False)
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    json.dumps(a)
    assert a["clean"]["correct"] == 7 and a["n_examples"] == 10
    assert list(a["per_weather"]) == list(WEATHER) and a["threat"] == {"kind": "weather", "severities": [1, 5],
                                                                      "weather": list(WEATHER)}
    for name, w in a["per_weather"].items():
        for s in ("1", "5"):
            rec = w["per_severity"][s]
            xw = weather(x, name, int(s), seed=2)
            assert rec["correct"] == int((model(xw).argmax(1) == y).sum()) and rec["n"] == 10
            assert rec["ci95"][0] <= rec["accuracy"] <= rec["ci95"][1]
        assert math.isclose(w["mean"], (w["per_severity"]["1"]["accuracy"] + w["per_severity"]["5"]["accuracy"]) / 2)
    assert math.isclose(a["mean_weather_accuracy"], sum(w["mean"] for w in a["per_weather"].values()) / 6)
    # night darkens every image below the threshold: the model says 0 for all, 3 of which are labelled 0
    assert a["per_weather"]["night"]["per_severity"]["5"]["correct"] == int((y == 0).sum())
    assert a["protocol"]["settings"]["rain"]["5"]["rain_type"] == "torrential"


def test_a_loader_gives_the_same_report():
    x = signs(7, seed=5)
    y = torch.zeros(7, dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    a = evaluate_weather(Brightness(), loader, names=("rain", "night"), severities=(3,), progress=False)
    b = evaluate_weather(Brightness(), (x, y), names=("rain", "night"), severities=(3,), progress=False)
    assert a["per_weather"] == b["per_weather"]


def test_preview_grid_and_severity_plot(tmp_path):
    from robust.reports.evaluation import plot_weather, plot_weather_grid, render_markdown

    path = plot_weather_grid(signs(1)[0], tmp_path / "grid.png")
    assert path.read_bytes()[:8] == PNG
    assert plot_weather_grid(signs(1, side=8)[0, :1], tmp_path / "gray.png", names=("fog", "night"),
                             severities=(1, 5)).read_bytes()[:8] == PNG
    x = signs(4)
    report = evaluate_weather(Brightness(), (x, torch.zeros(4, dtype=torch.long)), severities=(1, 3, 5),
                              progress=False)
    assert plot_weather(report, tmp_path / "weather.png").read_bytes()[:8] == PNG
    md = render_markdown({"threat": {"kind": "linf", "norm": "linf", "eps": 0.1, "eps_str": "0.1"},
                          "n_examples": 4, "weather": report})
    assert "## Driving weather and light" in md and "| night |" in md


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A registry CNN-small for 8x8 digits, trained 2 epochs with Adam."""
    path = tmp_path_factory.mktemp("weather") / "weights.pt"
    torch.save(train(tiny_cnn(), epochs=2).state_dict(), path)
    return path


MODEL = ["--model", "cnn_small", "--model-args", '{"in_channels": 1, "input_size": 8}', "--data", "digits",
         "--norm", "linf", "--eps", "0.1", "--attacks", "fgsm", "--no-progress"]


def test_evaluate_cli_weather_flag_on_digits(weights, tmp_path, capsys):
    from robust.cli import main

    out = tmp_path / "eval"
    rc = main(["evaluate", *MODEL, "--weights", str(weights), "--no-audit", "--n-examples", "40", "--weather",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    w = report["weather"]
    assert w["n_examples"] == 40 and set(w["per_weather"]) == set(WEATHER)
    assert all(set(v["per_severity"]) == {"1", "2", "3", "4", "5"} for v in w["per_weather"].values())
    assert w["clean"] == report["clean"] and report["corruptions"] is None  # a group of its own
    assert w["protocol"]["image_size"] == [8, 8] and w["protocol"]["channels"] == 1
    md = (out / "report.md").read_text()
    assert "## Driving weather and light" in md and "weather.png" in md
    assert (out / "weather.png").read_bytes()[:8] == PNG
    assert "weather: mean accuracy" in capsys.readouterr().out


def test_audit_cli_weather_flag(weights, tmp_path, capsys):
    from robust.cli import main

    out = tmp_path / "audit"
    base = [*MODEL, "--weights", str(weights), "--n-examples", "12", "--no-corruptions"]
    assert main(["audit", *base, "--weather", "--out", str(out)]) == 0, capsys.readouterr().err
    audit = json.loads((out / "audit.json").read_text())
    w = audit["evaluation"]["weather"]
    assert w["n_examples"] == 12 and set(w["per_weather"]) == set(WEATHER)
    assert any(m.startswith("mean accuracy under driving weather and light") for m in audit["measured"])
    assert "## Driving weather and light" in (out / "audit.md").read_text()
    assert (out / "evaluation" / "weather.png").read_bytes()[:8] == PNG
    from robust.evaluation.audit import Audit
    from robust.evaluation.results import RobustnessReport
    from robust.reports.audit import audit_document

    plain = audit_document(Audit(RobustnessReport.from_dict({**audit["evaluation"], "weather": None}),
                                 audit["certification"], audit["certification_method"], {}))
    assert any("driving weather" in u and "--weather" in u for u in plain["not_checked"])  # not asked: said so
