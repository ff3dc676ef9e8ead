"""Run folders under abuse: two processes on one folder, kill -9, Ctrl-C twice, a full disk,
foreign folders, damaged metrics and checkpoints that do not fit.

Every failure must be one line (exit 2, or 130 for Ctrl-C), and nothing already written may
be lost or corrupted. Recipes are tiny (16x16 empirical prior, 12^3 voxels, a few steps);
most commands run in this process (``cli.main``) to save a torch import per case, and only
what needs a real second process (a lock held by another pid, a kill, a signal, a file-size
limit) starts one.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import sjc_env
from sjc_core.commands.run import resume_command
from sjc_core.files import atomic, locks
from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import load_recipe
from sjc_core.runs import engine
from sjc_core.runs.checkpoint import load_checkpoint
from test_engine import field_tensors, write_recipe

pytestmark = pytest.mark.skipif(locks.fcntl is None, reason="folder locks need fcntl (POSIX)")


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``sjc ARGS`` in this process: (exit code, stdout, stderr)."""
    from sjc_core import cli as cli_module

    monkeypatch.setattr(sys, "argv", ["sjc", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        cli_module.main()
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def one_error(stderr: str) -> str:
    lines = errors(stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(atomic.TEMP_PREFIX)]


def snapshot_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def recipe_of(path: Path, *sets: str):
    return load_recipe(path, load_registry(), list(sets))


def start(script: str, *args: str) -> subprocess.Popen[str]:
    """``python -c SCRIPT ARGS`` with this environment; stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sjc_env(),
    )


def wait_for(condition, what: str, process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {process.communicate()[1][-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# A run whose sixth step blocks until a signal arrives (a deterministic "long step"), through
# the real CLI: `python -c BLOCKING_RUN MARKER sjc-args...`.
BLOCKING_RUN = """
import sys, time
from pathlib import Path
from sjc_core import cli
from sjc_core.runs import engine

marker = Path(sys.argv[1])
build = engine.build_components

def build_with_a_slow_step(recipe, device, note=None):
    parts = build(recipe, device, note)
    calls = []
    def slow(render, progress):
        calls.append(1)
        if len(calls) == 6:
            marker.write_text("blocked")
            time.sleep(120)
        return render.opacity.mean() * 0
    parts.losses.append(("slow", slow))
    return parts

engine.build_components = build_with_a_slow_step
sys.argv = ["sjc", *sys.argv[2:]]
cli.main()
"""


def test_a_folder_in_use_refuses_a_second_run_resume_render_and_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, steps=40)
    run_dir = tmp_path / "busy"
    marker = tmp_path / "blocked"
    first = start(BLOCKING_RUN, marker, "run", recipe, "--run-dir", run_dir)
    try:
        wait_for(marker.exists, "the first run's sixth step", first)
        status = json.loads((run_dir / "status.json").read_text())
        # kept current: the last read-back (log_every 10, so the view/checkpoint steps) was step 4
        assert status["state"] == "running" and status["step"] == 4 and status["checkpoint_step"] == 4
        before = snapshot_files(run_dir)
        for args in (
            ["run", recipe, "--run-dir", run_dir],
            ["run", recipe, "--run-dir", run_dir, "--resume"],
            ["render", run_dir, "--frames", "2"],
            ["export-mesh", run_dir],
        ):
            code, _, err = cli(monkeypatch, capsys, *args)
            line = one_error(err)
            assert code == 2 and f"{run_dir}: in use by another sjc process (pid {first.pid}, sjc run)" in line, (args, err)
        assert snapshot_files(run_dir) == before  # nothing logged twice, nothing replaced
    finally:
        first.send_signal(signal.SIGINT)  # the blocked step never ends, so
        time.sleep(1.0)  # (two signals close together would count as one)
        first.send_signal(signal.SIGINT)  # a second Ctrl-C stops it at once
        first.communicate(timeout=60)
    assert first.returncode == 130
    # Once the holder is gone, the folder is free again.
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--run-dir", run_dir, "--resume")
    assert code == 0, err
    assert steps_logged(run_dir) == list(range(1, 41))


def test_double_ctrl_c_says_what_is_kept_and_the_real_resume_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, steps=10)
    run_dir = tmp_path / "my run"
    marker = tmp_path / "blocked"
    process = start(BLOCKING_RUN, marker, "run", recipe, "--set", "lr=0.04", "--run-dir", run_dir)
    wait_for(marker.exists, "the sixth step", process)
    process.send_signal(signal.SIGINT)  # "finish the step, then checkpoint": the step does not finish
    time.sleep(1.0)  # (two signals close together would count as one)
    process.send_signal(signal.SIGINT)  # "now"
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "error:" not in stderr
    said = [line for line in stderr.splitlines() if "Ctrl-C twice" in line]
    assert len(said) == 1, stderr
    command = f"sjc run {recipe} --set lr=0.04 --run-dir '{run_dir}' --resume"
    assert said[0] == (
        f"stopped at once at step 5 (Ctrl-C twice), without a checkpoint; the last checkpoint (step 4) is kept. "
        f"Continue with: {command}"
    )
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] == 4 and status["checkpoint_step"] == 4
    assert load_checkpoint(run_dir / "checkpoints" / "last.safetensors").step == 4

    # The printed command continues the run exactly.
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--set", "lr=0.04", "--run-dir", run_dir, "--resume")
    assert code == 0, err
    assert "resuming" in err and steps_logged(run_dir) == list(range(1, 11))
    straight = engine.run(recipe_of(recipe, "lr=0.04"), tmp_path / "straight", stream=io.StringIO())
    assert straight.state == "finished"
    a, b = field_tensors(tmp_path / "straight"), field_tensors(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_command_is_what_the_user_typed() -> None:
    assert resume_command(Path("recipes/demo.toml"), [], None) == "sjc run recipes/demo.toml --resume"
    assert (
        resume_command(Path("r.toml"), ["steps=9", 'prior.prompt="a cat"'], Path("out dir"))
        == "sjc run r.toml --set steps=9 --set 'prior.prompt=\"a cat\"' --run-dir 'out dir' --resume"
    )


# kill -9 in the middle of writing the checkpoint of step 6: a half-written temporary file
# is left beside last.safetensors and status.json says "running".
KILLED_MID_CHECKPOINT = """
import os, signal, sys
from pathlib import Path
from sjc_core.runs import checkpoint, engine
from sjc_core.plugins import load_registry
from sjc_core.recipes.recipe import load_recipe

save_file = checkpoint.save_file

def dies_writing_step_6(tensors, path, metadata):
    if metadata["step"] == "6":
        Path(path).write_bytes(b"half a checkpoint" * 1000)
        os.kill(os.getpid(), signal.SIGKILL)
    return save_file(tensors, path, metadata=metadata)

checkpoint.save_file = dies_writing_step_6
recipe = load_recipe(Path(sys.argv[1]), load_registry(), ["log_every=1"])
engine.run(recipe, Path(sys.argv[2]))
"""


def test_kill_9_is_recovered_as_a_crash_and_resume_continues_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, steps=10)
    run_dir = tmp_path / "crashed"
    killed = start(KILLED_MID_CHECKPOINT, recipe, run_dir)
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "running" and status["step"] == 5 and status["checkpoint_step"] == 4
    stale = temps(run_dir)
    assert [p.parent.name for p in stale] == ["checkpoints"] and stale[0].name.startswith(".sjc-tmp.last.")

    # A plain rerun says it crashed and how to continue; it changes nothing.
    outside = snapshot_files(tmp_path / "images")
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--run-dir", run_dir)
    assert code == 2
    assert one_error(err) == (
        f"error: {run_dir}: already holds a run that crashed at step 5 (last checkpoint step 4); "
        f"continue with: sjc run {recipe} --run-dir {run_dir} --resume"
    )
    assert temps(run_dir) == stale  # refused before taking the folder: nothing touched

    # --resume takes the (free) lock, removes the dead process's temporary file and continues.
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--run-dir", run_dir, "--resume")
    assert code == 0, err
    assert "removed 1 temporary file" in err and "crashed at step 5; continuing from its last checkpoint (step 4)" in err
    assert temps(run_dir) == []
    assert steps_logged(run_dir) == list(range(1, 11))
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    engine.run(recipe_of(recipe, "log_every=1"), tmp_path / "straight", stream=io.StringIO())
    a, b = field_tensors(tmp_path / "straight"), field_tensors(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a), "the run continued after kill -9 differs from an uninterrupted one"
    # Nothing was written outside the run folders.
    assert snapshot_files(tmp_path / "images") == outside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crashed", "images", "straight", "tiny.toml"]


def test_a_crash_before_any_checkpoint_is_started_again_by_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, steps=4)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.toml").write_text(recipe.read_text())
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "step": 1, "steps": 4, "checkpoint_step": None}))
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--run-dir", run_dir)
    assert code == 2 and "crashed at step 1 (no checkpoint was written; --resume starts it again)" in one_error(err)
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--run-dir", run_dir, "--resume")
    assert code == 0, err
    assert "before its first checkpoint; starting it again" in err
    assert steps_logged(run_dir) == [1, 2, 3, 4]


def test_folders_that_are_not_runs_and_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, steps=2)
    mine = tmp_path / "my-stuff"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "notes").mkdir()
    for args in (["--run-dir", mine], ["--run-dir", mine, "--resume"]):
        code, _, err = cli(monkeypatch, capsys, "run", recipe, *args)
        line = one_error(err)
        assert code == 2 and f"{mine}: exists, is not empty and is not a run folder (it holds notes, thesis.tex)" in line
    assert sorted(p.name for p in mine.iterdir()) == ["notes", "thesis.tex"]  # not even a lock file
    assert (mine / "thesis.tex").read_text() == "years of work"

    # A recipe.toml and a status.json of one's own do not make a run folder.
    (mine / "recipe.toml").write_text("my own recipe")
    (mine / "status.json").write_text('{"ok": true}')
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--run-dir", mine, "--resume")
    assert code == 2 and "is not a run folder (it holds notes, recipe.toml, status.json and 1 more)" in one_error(err)
    assert (mine / "recipe.toml").read_text() == "my own recipe" and (mine / "status.json").read_text() == '{"ok": true}'

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--run-dir", a_file)
    assert code == 2 and f"{a_file}: is a file, not a folder" in one_error(err)
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--set", f"output={a_file.as_posix()}")
    assert code == 2 and "output: is a file" in one_error(err)  # the recipe's own check
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--run-dir", a_file / "deeper" / "run")
    line = one_error(err)
    assert code == 2 and f"{a_file}: is a file, not a folder, so the run folder {a_file}/deeper/run cannot be created" in line
    with pytest.raises(engine.SjcError, match=re.escape(f"{a_file}: is a file, not a folder, so the run folder")):
        engine.run(recipe_of(recipe), a_file / "run", stream=io.StringIO())  # callers that skip the recipe's check
    assert a_file.read_text() == "x"

    # An empty folder is fine (and so is one holding only an old lock file).
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--run-dir", empty)
    assert code == 0, err


def test_resume_of_a_finished_run_without_its_checkpoint_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, steps=2)
    run_dir = tmp_path / "done"
    assert engine.run(recipe_of(recipe), run_dir, stream=io.StringIO()).state == "finished"
    (run_dir / "checkpoints" / "last.safetensors").unlink()
    before = snapshot_files(run_dir)
    code, _, err = cli(monkeypatch, capsys, "run", recipe, "--run-dir", run_dir, "--resume")
    line = one_error(err)
    assert code == 2 and f"{run_dir}: cannot resume: the run finished at step 2 but its checkpoint" in line
    assert "missing" in line
    assert snapshot_files(run_dir) == before  # outputs untouched


def test_cut_off_last_metrics_line_is_dropped_on_resume(tmp_path: Path) -> None:
    recipe = recipe_of(write_recipe(tmp_path, steps=6))
    parts = engine.build_components(recipe, torch.device("cpu"))

    def ctrl_c_at_step_3(render, progress: float) -> torch.Tensor:
        if round(progress * 6) == 2:  # the third step: as if Ctrl-C were pressed during it
            os.kill(os.getpid(), signal.SIGINT)
        return render.opacity.mean() * 0

    parts.losses.append(("ctrl-c", ctrl_c_at_step_3))
    run_dir = tmp_path / "run"
    assert engine.run(recipe, run_dir, parts=parts, stream=io.StringIO()).state == "interrupted"
    metrics = run_dir / "metrics.jsonl"
    assert steps_logged(run_dir) == [1, 2, 3]
    with metrics.open("a") as handle:
        handle.write('{"step": 4, "sigma": 0.5, "vi')  # what a full disk leaves

    out = io.StringIO()
    assert engine.run(recipe, run_dir, resume=True, stream=out).state == "finished"
    assert "dropped its cut-off last line (29 characters, not a whole record)" in out.getvalue()
    assert steps_logged(run_dir) == [1, 2, 3, 4, 5, 6]

    # A damaged line elsewhere is not guessed at: one line naming it.
    lines = metrics.read_text().splitlines()
    lines[1] = "garbage"
    metrics.write_text("\n".join(lines) + "\n")
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    with pytest.raises(engine.SjcError, match=re.escape(f"{metrics}:2: not a metrics record")):
        engine.run(recipe, run_dir, resume=True, stream=io.StringIO())


def test_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sjc_core.runs import checkpoint

    recipe = recipe_of(write_recipe(tmp_path, steps=6))
    run_dir = tmp_path / "run"
    save_file = checkpoint.save_file

    def disk_full_at_step_4(tensors, path, metadata):
        if metadata["step"] == "4":
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", disk_full_at_step_4)
    with pytest.raises(engine.SjcError) as error:
        engine.run(recipe, run_dir, stream=io.StringIO(), resume_hint="sjc run tiny.toml --resume")
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"{run_dir / 'checkpoints' / 'last.safetensors'}: cannot write (No space left on device); the run stopped "
        "at step 4, the last checkpoint (step 2) is kept; once that is fixed, continue with: sjc run tiny.toml --resume"
    )
    assert load_checkpoint(run_dir / "checkpoints" / "last.safetensors").step == 2
    assert temps(run_dir) == []
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["checkpoint_step"] == 2 and "No space left" in status["error"]

    monkeypatch.setattr(checkpoint, "save_file", save_file)  # space freed: the run continues
    assert engine.run(recipe, run_dir, resume=True, stream=io.StringIO()).state == "finished"
    assert steps_logged(run_dir) == list(range(1, 7))


def test_permission_error_on_a_view_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = recipe_of(write_recipe(tmp_path, steps=4))
    run_dir = tmp_path / "run"
    replace = os.replace

    def refuses_views(src, dst):
        if "step_000004" in str(dst):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src))
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", refuses_views)
    with pytest.raises(engine.SjcError, match=r"views/step_000004.png: cannot write \(Permission denied\); the run stopped"):
        engine.run(recipe, run_dir, stream=io.StringIO())
    assert temps(run_dir) == []


# `python -c LIMITED LIMIT args...`: sjc with every file capped at LIMIT bytes; writing past it
# fails with EFBIG (SIGXFSZ ignored), as writing to a full disk fails with ENOSPC.
LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["sjc", *sys.argv[2:]]
runpy.run_module("sjc_core", run_name="__main__")
"""


def test_a_real_file_size_limit_is_one_line_and_leaves_no_debris(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, steps=4)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        # views and the recipe fit in 40 kB, a checkpoint (about 80 kB) does not
        [sys.executable, "-c", LIMITED, "40000", "run", str(recipe), "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=300, env=sjc_env({"SJC_NATIVE": "0"}), check=False,
    )
    assert result.returncode == 2, result.stderr
    line = one_error(result.stderr)
    assert f"{run_dir / 'checkpoints' / 'last.safetensors'}: cannot write (File too large)" in line
    assert "no checkpoint was written" in line
    assert temps(run_dir) == [] and not (run_dir / "checkpoints" / "last.safetensors").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"


def test_checkpoints_that_do_not_fit_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file, save_file

    recipe = write_recipe(tmp_path, steps=2)
    run_dir = tmp_path / "run"
    engine.run(recipe_of(recipe), run_dir, stream=io.StringIO())
    checkpoint = run_dir / "checkpoints" / "last.safetensors"
    saved = run_dir / "recipe.toml"
    original = saved.read_text()
    saved.write_text(original.replace("grid_size = 12", "grid_size = 16"))
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    for args in (["render", run_dir, "--frames", "2"], ["export-mesh", run_dir],
                 ["run", recipe, "--run-dir", run_dir, "--resume"]):
        code, _, err = cli(monkeypatch, capsys, *args)
        line = one_error(err)
        assert code == 2 and f"{checkpoint}: does not fit this run's field (" in line, (args, err)
        assert "[12, 12, 12" in line and "[16, 16, 16" in line and "grid_size" in line

    saved.write_text(original)
    tensors = load_file(str(checkpoint))
    for metadata, fragment in (
        ({"step": "two"}, "damaged checkpoint metadata (step:"),
        ({"step": "2", "optim_groups": "{not json"}, "damaged checkpoint metadata (optim_groups:"),
        ({"steps": "2"}, "not an sjc checkpoint (no step recorded)"),
    ):
        save_file(tensors, str(checkpoint), metadata=metadata)
        for args in (["render", run_dir, "--frames", "2"], ["run", recipe, "--run-dir", run_dir, "--resume"]):
            code, _, err = cli(monkeypatch, capsys, *args)
            assert code == 2 and f"{checkpoint}: {fragment}" in one_error(err), (args, err)


def test_stale_temporaries_are_removed_when_the_lock_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, steps=2)
    run_dir = tmp_path / "run"
    engine.run(recipe_of(recipe), run_dir, stream=io.StringIO())
    for name in ("views/.sjc-tmp.step_000002.abc.png", "final/.sjc-tmp.turntable.xyz.mp4"):
        (run_dir / name).write_bytes(b"\0" * 1000)
    (run_dir / "views" / "keep-me.png").write_bytes(b"mine")
    code, _, err = cli(monkeypatch, capsys, "render", run_dir, "--frames", "2")
    assert code == 0, err
    assert "removed 2 temporary files" in err and temps(run_dir) == []
    assert (run_dir / "views" / "keep-me.png").read_bytes() == b"mine"


def test_lock_probe_and_holder_message(tmp_path: Path) -> None:
    assert locks.lock_holder(tmp_path) is None
    with locks.folder_lock(tmp_path, "sjc run"):
        assert locks.lock_holder(tmp_path) == f"pid {os.getpid()}, sjc run"
        assert locks.lock_holder(tmp_path) is not None  # probes do not disturb each other
        with pytest.raises(locks.FolderInUse, match=re.escape(f"{tmp_path}: in use by another sjc process (pid {os.getpid()}")):
            with locks.folder_lock(tmp_path, "sjc render"):
                pass
    assert locks.lock_holder(tmp_path) is None  # released with the block
    with locks.folder_lock(tmp_path, "sjc render"):
        pass
