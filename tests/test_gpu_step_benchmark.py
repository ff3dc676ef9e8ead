"""benchmarks/gpu_step.py runs end to end and reports consistent figures.

The ``--tiny`` runs (CPU, the tests' tiny UNet, the recipe's 100^3 grid and 64x64 render)
take a few seconds each; the full-size run (an SD-1.5-sized UNet) is CUDA-only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_step.py"
PHASES = ("render", "prior", "backward", "optimizer")


def run_benchmark(*args: str, timeout: float = 600) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, f"gpu_step.py failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def check_figures(figures: dict) -> None:
    phases = figures["phase_ms"]
    assert set(PHASES) <= set(phases)
    assert all(phases[name] > 0 for name in PHASES), phases
    assert figures["phase_sum_ms"] == pytest.approx(sum(phases.values()), abs=0.01)
    # The phases are sub-intervals of the synchronised step (medians, so allow rounding slack).
    assert figures["phase_sum_ms"] <= figures["step_ms_synced_median"] * 1.25 + 1.0
    # Throughput pass: steps/s and ms per step agree, and the step costs about the phase sum
    # (separate passes on a shared machine: a wide margin).
    assert figures["steps_per_s"] > 0
    assert figures["step_ms"] == pytest.approx(1000 / figures["steps_per_s"], rel=1e-3)
    assert figures["phase_sum_ms"] / 4 <= figures["step_ms"] <= figures["phase_sum_ms"] * 4
    assert figures["minutes_10k"] == pytest.approx(10_000 / figures["steps_per_s"] / 60, rel=1e-3)
    assert figures["peak_memory"]["mib"] > 0 and figures["peak_memory"]["kind"]


@pytest.fixture(scope="module")
def tiny_with_reference() -> dict:
    return run_benchmark("--tiny", "--device", "cpu", "--threads", "1", "--steps", "3", "--warmup", "1", "--reference")


def test_tiny_step_reports_phases(tiny_with_reference: dict) -> None:
    report = tiny_with_reference
    assert report["mode"] == "tiny" and report["device"] == "cpu"
    settings = report["settings"]
    assert settings["grid"] == [100, 100, 100]
    assert settings["render_size"] == 64 and settings["latent_size"] == 16
    assert settings["guidance_scale"] == 100.0 and settings["unet_batch"] == 2
    assert settings["estimator"] == "paas"
    assert settings["losses"] == ["emptiness", "center-depth"]
    assert settings["unet_params"] > 0
    check_figures(report["ours"])
    assert "RSS" in report["ours"]["peak_memory"]["kind"]  # CPU memory is labelled as such
    assert report["targets"]["met"] is None  # targets are for a full-size GPU run only


def test_tiny_reference_and_ratio(tiny_with_reference: dict) -> None:
    report = tiny_with_reference
    check_figures(report["reference"])
    comparison = report["comparison"]
    ours, ref = report["ours"]["steps_per_s"], report["reference"]["steps_per_s"]
    assert comparison["speedup_vs_reference"] == pytest.approx(ours / ref, rel=0.01)
    assert comparison["step_time_ratio_ours_over_reference"] > 0
    assert set(PHASES) <= set(comparison["phase_ratio_reference_over_ours"])


def test_tiny_without_reference_has_no_ratio() -> None:
    """Also: the step timed is the recipe's estimator's (here SDS with two noises per step)."""
    report = run_benchmark(
        "--tiny", "--device", "cpu", "--threads", "1", "--steps", "3", "--warmup", "1",
        "--set", "estimator.name=sds", "--set", "estimator.n_noise=2",
    )
    check_figures(report["ours"])
    assert report["settings"]["estimator"] == "sds" and report["settings"]["unet_batch"] == 4
    assert "reference" not in report and "comparison" not in report
    assert report["targets"]["figures"]["speedup_vs_reference"] is None


def test_reference_needs_the_paas_estimator() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--reference", "--set", "estimator.name=sds"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2 and "'sds'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (full-size SD-1.5 UNet step)")
def test_full_size_on_cuda() -> None:
    report = run_benchmark("--device", "cuda", "--steps", "3", "--warmup", "1", "--reference")
    assert report["device"] == "cuda"
    assert report["settings"]["unet_params"] > 800_000_000  # SD 1.5's UNet: 859.5 M
    assert report["settings"]["latent_size"] == 64 and report["settings"]["unet_batch"] == 2
    check_figures(report["ours"])
    check_figures(report["reference"])
    memory = report["ours"]["peak_memory"]
    assert memory["kind"].startswith("torch.cuda.max_memory_allocated") and memory["gib"] > 1.0
    assert report["ours"]["phase_sync"] != "not needed (cpu)"
    assert report["targets"]["met"] is not None


def test_tiny_perp_neg_step_trains_and_states_its_unet_batch() -> None:
    """Perp-Neg through the real trainer: the report says what the extra UNet branches cost."""
    report = run_benchmark(
        "--tiny", "--device", "cpu", "--threads", "1", "--steps", "3", "--warmup", "1", "--set", "prior.perp_neg=true",
    )
    check_figures(report["ours"])
    assert report["settings"]["perp_neg"] is True
    assert report["settings"]["unet_batch"] == "2-4 (Perp-Neg: by azimuth)"
