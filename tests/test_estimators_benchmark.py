"""``benchmarks/estimators.py`` end to end on a tiny one-object suite (seconds, not minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_compares_estimators_at_equal_steps_and_equal_time(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    made = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_object_suite.py"), "--out", str(suite), "--objects", "mug",
         "--views", "8", "--test", "3", "--size", "32"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "estimators.py"), "--suite", str(suite), "--objects", "mug",
         "--steps", "3", "--threads", "1", "--estimators", "paas", "sds:weighting='uniform',t_range=[0.1, 0.9]", "ism",
         "--set", "field.grid_size=12", "--set", "prior.resolution=32", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table, sep, blob = proc.stdout.partition("JSON:\n")
    assert sep, proc.stdout
    for column in ("estimator", "s/step", "PSNR@3 steps", "steps@equal time", "PSNR@equal time", "mean pic"):
        assert column in table
    report = json.loads(blob)
    assert report == json.loads((tmp_path / "r.json").read_text())
    (row,) = report["objects"]
    assert [e["estimator"] for e in row["estimators"]] == ["paas", "sds:weighting='uniform',t_range=[0.1, 0.9]", "ism"]
    paas = row["estimators"][0]
    assert paas["equal_time"] == paas["equal_steps"] and paas["equal_steps"]["steps"] == 3
    budget = paas["equal_steps"]["seconds"]
    for entry in row["estimators"]:
        assert 5.0 < entry["equal_steps"]["psnr_db"] < 60.0 and 5.0 < entry["equal_time"]["psnr_db"] < 60.0
        # the budget bought at this estimator's own speed (seconds_per_step is rounded to 4 digits)
        assert abs(entry["equal_time"]["steps"] - max(1, round(budget / entry["seconds_per_step"]))) <= 1
    bad = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "estimators.py"), "--estimators", "sds:weighting"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )
    assert bad.returncode == 2 and "--estimators: sds:weighting: expected KEY=VALUE" in bad.stderr
