"""``sjc batch``: planning, in-process and Ray execution, skip/resume, batch.json, gallery.

Every batch goes through the real CLI (``python -m sjc_core batch``) with the empirical
prior on tiny recipes. The Ray test starts a local Ray instance on the CPU and skips when
Ray is not installed (``pip install -e '.[ray]'``); the screenshot test needs Debian's
``chromium`` and skips without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import interrupt_after_logged_steps, run_sjc_command, sjc_env, write_sample_images
from sjc_core.batch import plan, runner
from sjc_core.files.pictures import read_video_frames
from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import load_recipe
from sjc_core.runs import engine
from sjc_core.runs.checkpoint import load_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
RUN_FILES = ("recipe.toml", "metrics.jsonl", "status.json", "checkpoints/last.safetensors", "final/turntable.mp4",
             "final/turntable_strip.png", "final/last_view.png")


def write_recipe(folder: Path, name: str, steps: int = 4, images: str = "images", seed: int = 3) -> Path:
    """A tiny empirical-prior recipe (12^3 voxels, 16 px, 4-frame turntable): seconds per run."""
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nseed = {seed}\nsteps = {steps}\ndevice = "cpu"\nview_every = 2\ncheckpoint_every = 2\n'
        f'[prior]\nname = "empirical"\nimages = "{images}"\nresolution = 16\n'
        '[field]\nname = "voxel"\ngrid_size = 12\n'
        '[[losses]]\nname = "emptiness"\nweight = 10.0\n'
        "[camera]\ntest_frames = 4\n"
    )
    return path


@pytest.fixture
def recipes(tmp_path: Path) -> Path:
    """good.toml (valid), bad.toml (its images folder is missing: fails when the run starts)."""
    write_sample_images(tmp_path / "images")
    write_recipe(tmp_path, "good")
    write_recipe(tmp_path, "bad", images="missing-images")
    return tmp_path


def read_batch(out: Path) -> dict:
    return json.loads((out / "batch.json").read_text())


def by_key(document: dict) -> dict[str, dict]:
    return {run["key"]: run for run in document["runs"]}


def check_finished_folder(run_dir: Path, seed: int) -> None:
    """The run folder is exactly what `sjc run` writes, for the right seed."""
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"{run_dir}/{name} missing"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == status["steps"]
    assert load_recipe(run_dir / "recipe.toml", load_registry()).settings.seed == seed
    assert len(read_video_frames(run_dir / "final" / "turntable.mp4")) == 4


# ----------------------------------------------------------------------------- planning


def test_seed_and_sweep_syntax() -> None:
    assert plan.parse_seeds("0,1,2") == [0, 1, 2]
    assert plan.parse_seeds("0-3,8,2") == [0, 1, 2, 3, 8]
    for bad in ("", "a", "3-1", "-1", "1,,2"):
        with pytest.raises(runner.SjcError, match="--seeds"):
            plan.parse_seeds(bad)
    assert plan.split_values('[30,60],[40,70]') == ["[30,60]", "[40,70]"]
    assert plan.split_values('"a, b",c') == ['"a, b"', "c"]
    combos = plan.parse_sweeps(["lr=0.05,0.1", "camera.fov_range=[30,60],[40,70]"])
    assert len(combos) == 4 and ["lr=0.1", "camera.fov_range=[40,70]"] in combos
    with pytest.raises(runner.SjcError, match="use --seeds"):
        plan.parse_sweeps(["seed=1,2"])
    with pytest.raises(runner.SjcError, match="given twice"):
        plan.parse_sweeps(["lr=1", "lr=2"])
    # Folder names: stable, independent of spelling and order, distinct for distinct overrides.
    assert plan.run_key("burger", 2, []) == "burger-seed2"
    a = plan.run_key("burger", 2, ["lr = 0.1", "steps=5"])
    assert a == plan.run_key("burger", 2, ["steps=5", "lr=0.1"]) and a.startswith("burger-seed2-")
    assert a != plan.run_key("burger", 2, ["lr=0.2", "steps=5"])
    assert plan.run_key("a/b c", 0, []) == "a_b_c-seed0"


def test_dry_run_plans_recipes_seeds_and_sweeps(recipes: Path) -> None:
    out = recipes / "out"
    code, stdout, stderr = run_sjc_command(
        "batch", "good.toml", "bad.toml", "./good.toml", "--seeds", "0-1", "--sweep", "lr=0.05,0.1", "--set", "steps=3",
        "--out", out, "--dry-run", cwd=recipes,
    )
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    # the same file twice is one recipe: 2 recipes x 2 learning rates x 2 seeds, in the order given
    assert len(lines) == 8 and all(" good.toml " in line for line in lines[:4])
    assert all(" bad.toml " in line for line in lines[4:])
    folders = {line.split()[0] for line in lines[:4]}
    assert len(folders) == 4 and all(Path(f).parent == out.resolve() for f in folders)
    assert {Path(f).name.rsplit("-", 1)[0] for f in folders} == {"good-seed0", "good-seed1"}
    assert not out.exists(), "a dry run writes nothing"
    # The same batch planned again (spelled differently) maps to the same folders.
    again = plan.plan(["good.toml"], load_registry(), out.resolve(), seeds=[1, 0], sets=["steps = 3"],
                       sweeps=["lr=0.1,0.05"])
    assert {str(out.resolve() / job.key) for job in again} == folders

    # Two recipes with the same name would share folders: refused before anything runs.
    (recipes / "twin.toml").write_text((recipes / "good.toml").read_text())
    code, _, stderr = run_sjc_command("batch", "good.toml", "twin.toml", "--out", out, cwd=recipes)
    assert code == 2 and "different `name`s" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    with pytest.raises(runner.SjcError, match="use --out"):
        plan.plan(["good.toml"], load_registry(), out, sets=["output=x"])


# ----------------------------------------------------------------------------- in-process


FALLBACK_ARGS = ("batch", "good.toml", "bad.toml", "invalid.toml", "--seeds", "0,1", "--out", "out")


@pytest.fixture(scope="module")
def fallback_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str, str]:
    """One in-process batch, as if Ray were not installed: (folder, exit code, stdout, stderr).

    good.toml x seeds 0,1 finish; bad.toml fails when its runs start (missing images);
    invalid.toml fails validation (steps = -1).
    """
    folder = tmp_path_factory.mktemp("fallback")
    write_sample_images(folder / "images")
    write_recipe(folder, "good")
    write_recipe(folder, "bad", images="missing-images")
    write_recipe(folder, "invalid", steps=-1)
    # A `ray` package that cannot be imported stands for "Ray is not installed".
    (folder / "no_ray" / "ray").mkdir(parents=True)
    (folder / "no_ray" / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    code, stdout, stderr = run_sjc_command(*FALLBACK_ARGS, env={"PYTHONPATH": str(folder / "no_ray")}, cwd=folder)
    return folder, code, stdout, stderr


def test_without_ray_runs_one_after_another_and_skips_finished(fallback_batch: tuple[Path, int, str, str]) -> None:
    recipes, code, stdout, stderr = fallback_batch
    out = recipes / "out"
    assert code == 1, stderr  # some runs failed
    assert "Ray is not installed" in stderr and "one after another" in stderr
    assert "Traceback" not in stderr
    document = read_batch(out)
    assert document["executor"] == "in-process"
    runs = by_key(document)
    assert set(runs) == {f"{n}-seed{s}" for n in ("good", "bad", "invalid") for s in (0, 1)}
    assert document["counts"] == {"finished": 2, "running": 0, "failed": 4, "interrupted": 0, "queued": 0}
    for seed in (0, 1):
        check_finished_folder(out / f"good-seed{seed}", seed)
        assert "missing-images: no such folder" in runs[f"bad-seed{seed}"]["error"]
        assert "steps: Input should be greater than 0" in runs[f"invalid-seed{seed}"]["error"]
        assert not (out / f"bad-seed{seed}").exists() and not (out / f"invalid-seed{seed}").exists()
    # Different seeds really are different runs.
    a, b = (load_checkpoint(out / f"good-seed{s}" / "checkpoints" / "last.safetensors").field_state for s in (0, 1))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    good = runs["good-seed0"]
    assert good["state"] == "finished" and good["step"] == 4 and good["total_seconds"] > 0
    assert set(good["final_terms"]) == {"paas", "emptiness"}
    # a summary line per change, with the counts, and the failure's error
    assert "2 done, 0 running, 4 failed" in stderr and "failed bad-seed0: prior.images" in stderr
    assert "finished    good-seed0" in stdout and f"{out.resolve() / 'index.html'}" in stdout

    before = (out / "good-seed0" / "checkpoints" / "last.safetensors").stat().st_mtime_ns
    code, _, stderr = run_sjc_command(*FALLBACK_ARGS, "--no-ray", cwd=recipes)
    assert code == 1
    assert "2 already finished" in stderr and "running good-seed" not in stderr
    assert (out / "good-seed0" / "checkpoints" / "last.safetensors").stat().st_mtime_ns == before
    runs = by_key(read_batch(out))
    assert runs["good-seed0"]["skipped"] is True and runs["good-seed0"]["total_seconds"] == good["total_seconds"]
    assert runs["bad-seed0"]["state"] == "failed"  # failed runs are tried again (and fail again)


@pytest.mark.slow
def test_interrupted_batch_resumes_from_checkpoints(recipes: Path) -> None:
    steps = 40
    write_recipe(recipes, "long", steps=steps)
    out = recipes / "out"
    command = [sys.executable, "-m", "sjc_core", "batch", "long.toml", "--seeds", "0,1", "--no-ray", "--out", str(out)]
    process = subprocess.Popen(command, cwd=recipes, env=sjc_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    metrics = out / "long-seed0" / "metrics.jsonl"
    stderr = interrupt_after_logged_steps(process, metrics)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "run the same command again" in stderr
    runs = by_key(read_batch(out))
    stopped_at = runs["long-seed0"]["step"]
    assert runs["long-seed0"]["state"] == "interrupted" and 3 <= stopped_at < steps
    assert runs["long-seed1"]["state"] == "queued" and not (out / "long-seed1").exists()

    code, _, stderr = run_sjc_command(*command[3:], cwd=recipes)
    assert code == 0, stderr
    document = read_batch(out)
    assert document["counts"]["finished"] == 2
    assert f"resuming {out / 'long-seed0'} at step {stopped_at}/{steps}" in (out / "logs" / "long-seed0.log").read_text()
    assert by_key(document)["long-seed0"]["resumed"] is True
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged == list(range(1, steps + 1))
    # The resumed run ends exactly where an uninterrupted one does.
    recipe = load_recipe(recipes / "long.toml", load_registry(), ["seed=0"])
    engine.run(recipe, recipes / "straight", stream=open("/dev/null", "w"))
    straight = load_checkpoint(recipes / "straight" / "checkpoints" / "last.safetensors").field_state
    resumed = load_checkpoint(out / "long-seed0" / "checkpoints" / "last.safetensors").field_state
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


# ----------------------------------------------------------------------------- Ray


@pytest.mark.slow
@pytest.mark.skipif(not runner.ray_available(), reason="Ray is not installed (pip install -e '.[ray]')")
def test_ray_batch_on_a_local_instance(recipes: Path) -> None:
    out = recipes / "out"
    write_recipe(recipes, "other", seed=7)
    args = ("batch", "good.toml", "other.toml", "bad.toml", "--set", "lr=0.1", "--out", out)
    code, stdout, stderr = run_sjc_command(*args, cwd=recipes, timeout=600)
    assert code == 1, stderr  # the bad recipe's run failed, the others finished
    assert "Traceback" not in stderr
    document = read_batch(out)
    assert document["executor"] == "ray" and document["ray"]["address"] == "local"
    assert document["gpus_per_run"] == 0 and document["cpus_per_run"] == 1
    runs = document["runs"]
    assert [run["recipe"] for run in runs] == ["good.toml", "other.toml", "bad.toml"]
    assert document["counts"] == {"finished": 2, "running": 0, "failed": 1, "interrupted": 0, "queued": 0}
    for run in runs:
        name, seed = run["recipe"].removesuffix(".toml"), run["seed"]
        assert seed == {"good": 3, "other": 7, "bad": 3}[name]  # each recipe's own seed
        assert run["key"] == plan.run_key(name, seed, ["lr=0.1"]) and run["key"] != f"{name}-seed{seed}"
        if name == "bad":
            assert run["state"] == "failed" and "missing-images: no such folder" in run["error"]
            assert not (out / run["key"]).exists()
        else:
            assert run["state"] == "finished", run
            check_finished_folder(out / run["key"], seed)
            assert load_recipe(out / run["key"] / "recipe.toml", load_registry()).settings.lr == 0.1
    assert "started good-seed3-" in stderr and "ETA" in stderr and "failed bad-seed3-" in stderr
    page = (out / "index.html").read_text()
    assert page.count('class="card"') == 3 and "missing-images: no such folder" in page
    for run in runs[:2]:
        assert f'src="{run["key"]}/final/last_view.png"' in page

    # The same batch again, even without Ray, finds the same folders and skips the finished runs.
    code, _, stderr = run_sjc_command(*args, "--no-ray", cwd=recipes)
    assert code == 1 and "2 already finished" in stderr and "running good" not in stderr


# ----------------------------------------------------------------------------- gallery


def test_gallery_escapes_text_and_links_relatively(tmp_path: Path) -> None:
    from sjc_core.batch import gallery

    (tmp_path / "x-seed0" / "final").mkdir(parents=True)
    for name in ("last_view.png", "turntable_strip.png", "turntable.mp4"):
        (tmp_path / "x-seed0" / "final" / name).write_bytes(b"")
    document = {
        "counts": {"finished": 1, "failed": 1},
        "runs": [
            {"key": "x-seed0", "folder": "x-seed0", "recipe": "<b>x</b>.toml", "seed": 0, "state": "finished",
             "outputs": {"view": "last_view.png", "strip": "turntable_strip.png", "turntable": "turntable.mp4"},
             "final_terms": {"paas": 1.5}, "wall_seconds": 61, "overrides": ['prior.prompt="<script>"']},
            {"key": "y-seed1", "folder": "y-seed1", "recipe": "y.toml", "seed": 1, "state": "failed",
             "error": "prior.images: a & b <missing>"},
        ],
    }
    page = gallery.render_gallery(tmp_path, document)
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;.toml" in page
    assert "a &amp; b &lt;missing&gt;" in page
    assert 'src="x-seed0/final/last_view.png"' in page and 'href="x-seed0/final/turntable.mp4"' in page
    assert "file://" not in page and "http" not in page.replace('"utf-8"', "")
    assert "1:01 training" in page and "final paas" in page


def screenshot(page: Path, png: Path, profile: Path) -> np.ndarray:
    import imageio.v3 as iio

    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1200,900", page.resolve().as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=120)
    assert png.is_file(), f"chromium wrote no screenshot of {page}"
    return iio.imread(png)[..., :3].astype(np.float64)


def near(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.abs(image - np.array(colour)).max(axis=-1) < 8


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium) for a screenshot")
def test_gallery_renders_in_headless_chromium(fallback_batch: tuple[Path, int, str, str], tmp_path: Path) -> None:
    import imageio.v3 as iio

    out = fallback_batch[0] / "out"
    shot = screenshot(out / "index.html", tmp_path / "gallery.png", tmp_path / "profile")
    assert shot.shape == (900, 1200, 3)
    assert shot.std() > 10, "the screenshot is blank"

    # Where are the pictures? The same page with every picture replaced by a flat, loud colour
    # of the same size (same layout): magenta views, cyan strips.
    marked = tmp_path / "marked"
    shutil.copytree(out, marked)
    for picture in marked.glob("*/final/*.png"):
        height, width = iio.imread(picture).shape[:2]
        colour = (255, 0, 255) if picture.name == "last_view.png" else (0, 255, 255)
        iio.imwrite(picture, np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy())
    layout = screenshot(marked / "index.html", tmp_path / "marked.png", tmp_path / "profile2")
    views, strips = near(layout, (255, 0, 255)), near(layout, (0, 255, 255))
    assert views.mean() > 0.05 and strips.mean() > 0.005, "the gallery shows no pictures"
    assert not near(shot, (255, 0, 255)).any()

    # There, the real page shows the runs' own pictures: varied, with their colours.
    assert shot[views].std(axis=0).mean() > 10 and shot[strips].std(axis=0).mean() > 10
    expected = np.mean([iio.imread(p)[..., :3].reshape(-1, 3).mean(axis=0) for p in out.glob("*/final/last_view.png")],
                       axis=0)
    assert np.abs(shot[views].mean(axis=0) - expected).max() < 12


# ----------------------------------------------------------------------------- overrides checked up front


def test_a_bad_override_is_refused_before_anything_starts(recipes: Path) -> None:
    out = recipes / "out"
    code, stdout, stderr = run_sjc_command("batch", "good.toml", "--set", "test_frames=2", "--out", out, "--no-ray",
                                           cwd=recipes)
    assert code == 2 and stdout == "" and "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        "error: good.toml: test_frames: unknown key (did you mean 'camera.test_frames'?) (with --set test_frames=2)"
    ]
    assert not out.exists(), "nothing is planned, run or written"


def test_plan_refuses_overrides_that_break_a_valid_recipe(recipes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(recipes)
    registry = load_registry()
    out = (recipes / "out").resolve()
    with pytest.raises(runner.SjcError) as caught:
        plan.plan(["good.toml"], registry, out, sweeps=["camera.test_frames=4,100000"])
    (line,) = caught.value.problems
    assert line.startswith("good.toml: camera.test_frames: Input should be less than or equal to 10000")
    assert line.endswith("(got '100000') (with --sweep camera.test_frames=100000)")
    with pytest.raises(runner.SjcError, match=r"--set losses.3: the recipe has 1 entries there \(in good.toml\)"):
        plan.plan(["good.toml"], registry, out, sets=["losses.3.weight=1"])
    # A recipe that is broken on its own is still that recipe's failed run; the others plan.
    jobs = plan.plan(["good.toml", "bad.toml"], registry, out, sets=["lr=0.1"])
    errors = {job.recipe: job.error for job in jobs}
    assert errors["good.toml"] is None and "missing-images: no such folder" in errors["bad.toml"]
    # A megabyte of override is echoed as a cut.
    with pytest.raises(runner.SjcError) as caught:
        plan.plan(["good.toml"], registry, out, sets=["device=" + "d" * 1_000_000])
    assert len(caught.value.problems) == 1 and len(caught.value.problems[0]) < 300


def test_seeds_and_sweeps_are_bounded() -> None:
    with pytest.raises(runner.SjcError, match="more than 10,000 seeds"):
        plan.parse_seeds("0-99999999999")
    with pytest.raises(runner.SjcError, match=r"at most 2\*\*63 - 1"):
        plan.parse_seeds("18446744073709551616")
    with pytest.raises(runner.SjcError, match="more than 10,000 combinations"):
        plan.parse_sweeps(["lr=" + ",".join(["0.1"] * 101), "steps=" + ",".join(["1"] * 101)])
    assert len(plan.run_key("n" * 5000, 0, [])) < 120


def test_the_batch_core_does_not_import_the_commands() -> None:
    code = "import sys, sjc_core.batch; print([m for m in sys.modules if m.startswith('sjc_core.commands')])"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=sjc_env(), timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
