"""scripts/bench_training.py runs end to end and reports well-formed, correct numbers.

Structure and correctness only: timing ratios depend on the machine, so none is asserted.
"""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_training.py"


@pytest.fixture(scope="module")
def bench() -> dict:
    return runpy.run_path(str(SCRIPT), run_name="bench_training")


@pytest.fixture(scope="module")
def results(bench: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["--quick", "--batch", "8", "--repeats", "2", "--warmup", "1", "--steps", "3",
            "--train-steps", "3", "--eval-examples", "16", "--threads", "1", "--json", str(path)]
    threads = torch.get_num_threads()
    try:
        returned = bench["main"](argv)
    finally:
        torch.set_num_threads(threads)  # the script sets the process-wide thread count
    return returned, json.loads(path.read_text())


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_json_matches_returned_results(results: tuple[dict, dict]) -> None:
    returned, written = results
    assert written == json.loads(json.dumps(returned))
    assert set(written) == {"machine", "versions", "config", "peak_flops", "randomness", "attack", "training_step"}
    assert set(written["versions"]) == {"python", "torch", "torchattacks", "robust"}
    assert written["config"]["model"] == "cnn_small" and written["config"]["batch"] == 8
    assert written["config"]["input"] == [1, 28, 28]


def test_attack_section(results: tuple[dict, dict]) -> None:
    attack = results[1]["attack"]
    # The attack comparison uses the first --steps value, step 2.5 * eps / k (Madry et al.).
    assert attack["steps"] == 3 and attack["eps"] == 0.3
    assert attack["step_size"] == pytest.approx(2.5 * 0.3 / 3)
    for key in ("ours_ms", "ours_min_ms", "torchattacks_ms", "torchattacks_min_ms",
                "ours_images_per_s", "torchattacks_images_per_s", "speedup"):
        assert _positive(attack[key]), key
    # images/s is the batch divided by the median time.
    assert attack["ours_images_per_s"] == pytest.approx(8 / (attack["ours_ms"] / 1e3))
    acc = attack["robust_accuracy"]
    assert acc["n"] == 16
    for key in ("clean", "ours", "torchattacks"):
        assert 0.0 <= acc[key] <= 1.0, key
    assert 1 <= acc["training"]["steps"] <= 3


def test_training_step_rows_and_floor(results: tuple[dict, dict]) -> None:
    rows = {r["method"]: r for r in results[1]["training_step"]}
    assert list(rows) == ["Standard", "FGSM-RS", "PGD-3", "TRADES-3"]
    # Floor (2k + 3) / 3 standard steps: k attack steps of ~2 passes plus a 3-pass step; TRADES
    # adds two clean forward passes (its KL target and its natural loss term): (2k + 5) / 3.
    expected = {"Standard": (0, 1.0), "FGSM-RS": (1, 5 / 3), "PGD-3": (3, 3.0), "TRADES-3": (3, 11 / 3)}
    for name, (k, floor) in expected.items():
        row = rows[name]
        assert row["k"] == k
        assert row["floor"] == pytest.approx(floor)
        assert row["min_ms"] <= row["ms"]
        for key in ("ms", "min_ms", "images_per_s", "cost", "cost_over_floor"):
            assert _positive(row[key]), (name, key)
        assert row["cost_over_floor"] == pytest.approx(row["cost"] / floor)
    assert rows["Standard"]["cost"] == pytest.approx(1.0)  # each paired ratio with itself is 1


def test_floor_ratio_formula(bench: dict) -> None:
    assert bench["floor_ratio"](10) == pytest.approx(23 / 3)
    assert bench["floor_ratio"](1) == pytest.approx(5 / 3)
    assert bench["floor_ratio"](10, extra_forwards=2) == pytest.approx(25 / 3)


def test_fresh_randomness_reported(results: tuple[dict, dict]) -> None:
    randomness = results[1]["randomness"]
    assert randomness["fresh"] is True
    assert 0.0 < randomness["fraction_pixels_differ"] <= 1.0


def test_autoattack_benchmark_compares_both_on_the_same_examples(tmp_path, capsys):
    # A briefly trained model on 40 digits: ours must be at least as strong (exit status 0).
    bench = runpy.run_path(str(SCRIPT.parent / "bench_autoattack.py"), run_name="bench_autoattack")
    path = tmp_path / "aa.json"
    assert bench["main"](["--epochs", "2", "--n-examples", "40", "--batch-size", "40", "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    assert out["ours"]["n"] == out["torchattacks"]["n"] == 40
    assert out["ours"]["accuracy"] <= out["torchattacks"]["accuracy"]
    assert _positive(out["ours_seconds"]) and _positive(out["torchattacks_seconds"])
    assert "time ratio ours / torchattacks" in capsys.readouterr().out


def test_training_benchmark_switches_are_recorded_and_run(tmp_path) -> None:
    # bf16 autocast and channels_last on the CPU path, TRADES left out: the rows that remain.
    bench = runpy.run_path(str(SCRIPT), run_name="bench_training")
    threads = torch.get_num_threads()
    try:
        out = bench["main"](["--quick", "--batch", "8", "--repeats", "1", "--warmup", "1", "--steps", "2",
                             "--train-steps", "2", "--eval-examples", "8", "--threads", "1", "--precision", "bf16",
                             "--channels-last", "--no-trades"])
    finally:
        torch.set_num_threads(threads)
    assert out["config"]["precision"] == "bf16" and out["config"]["channels_last"] is True
    assert [r["method"] for r in out["training_step"]] == ["Standard", "FGSM-RS", "PGD-2"]
    assert out["peak_flops"] is None  # no GPU: no MFU rows
    assert all(_positive(r["images_per_s"]) for r in out["training_step"])


def test_certification_benchmark_times_complete_certificates(tmp_path) -> None:
    bench = runpy.run_path(str(SCRIPT.parent / "bench_certify.py"), run_name="bench_certify")
    path = tmp_path / "certify.json"
    out = bench["main"](["--models", "cnn_small", "--device", "cpu", "--batch", "200", "--n", "400", "--repeats", "1",
                         "--warmup", "0", "--certify-images", "1", "--certify-n", "400", "--json", str(path)])
    r = out["models"]["cnn_small"]
    assert json.loads(path.read_text())["models"]["cnn_small"]["samples"] == 400
    assert out["fresh_noise_min_distance"] > 0
    assert r["precision"] == "32" and r["fast"] is False  # the CPU defaults
    assert r["forward_images_per_s"] == r["plain_forward_images_per_s"]  # the same network on CPU
    assert _positive(r["certify_samples_per_s"]) and _positive(r["certify_seconds_per_image"])
    assert r["ratio"] == pytest.approx(r["certify_samples_per_s"] / r["forward_images_per_s"])
