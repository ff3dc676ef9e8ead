"""``sjc batch``: many runs at once — plan recipes x seeds x sweeps, run them, summarise.

Planning turns the command line into :class:`Job` s, each with a stable run folder
``OUT/<name>-seed<seed>[-<hash of overrides>]``, so the same batch run again maps to the
same folders: finished runs are skipped, interrupted or failed ones continue from their
checkpoints. Execution is either Ray tasks (one ``engine.run`` per task, local instance
or an existing cluster) or, without Ray, the same jobs one after another in this
process. Either way a failure is captured as that run's error and the others go on,
``batch.json`` and the ``index.html`` gallery are rewritten at every change, and a
one-line summary (done / running / failed / queued, ETA) goes to stderr.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from sjc_core.batch import gallery
from sjc_core.batch.folder import BATCH_FILE, LOG_DIR, check_batch_folder, open_log
from sjc_core.batch.gallery import duration
from sjc_core.batch.plan import Job
from sjc_core.errors import SjcError
from sjc_core.plugins import default_registry
from sjc_core.recipes.recipe import read_toml, validate_recipe
from sjc_core.runs.progress import format_seconds

STATES = ("finished", "running", "failed", "interrupted", "queued")


def execute_job(job: Job, out: str, tracker: Any = None) -> dict[str, Any]:
    """Run one job to the end (or resume it) and describe the outcome; never raises an Exception.

    Runs in a Ray worker or in the batch's own process. The engine's output goes to
    ``OUT/logs/<key>.log`` so run folders stay exactly what ``sjc run`` writes.
    """
    from sjc_core.runs import engine

    if tracker is not None:
        tracker.started.remote(job.key)
    folder = engine.RunFolder(Path(out) / job.key)
    began = time.perf_counter()
    resume = folder.root.exists()
    outcome: dict[str, Any] = {"resumed": resume, "node": os.uname().nodename}
    with open_log(Path(out), job.key) as log:
        print(f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} {job.recipe} seed {job.seed}", file=log)
        try:
            if job.error or job.raw is None:
                raise SjcError(job.error or "recipe could not be read")
            raw = copy.deepcopy(job.raw)
            if resume and folder.recipe.exists():
                # Continue with the run's own recipe; relative paths still resolve from the recipe's folder.
                raw = read_toml(folder.recipe)
            recipe = validate_recipe(raw, default_registry(), base_dir=Path(job.base_dir), source=job.recipe)
            summary = engine.run(recipe, folder.root, resume=resume, stream=log)
            outcome.update(state=summary.state, step=summary.step)
        except SjcError as exc:
            outcome.update(state="failed", error="; ".join(exc.problems) or str(exc))
            print(f"error: {outcome['error']}", file=log)
        except Exception as exc:  # any crash of one run is that run's failure, not the batch's
            outcome.update(state="failed", error=f"{type(exc).__name__}: {exc}")
            traceback.print_exc(file=log)
    outcome["total_seconds"] = round(time.perf_counter() - began, 3)
    return outcome


def folder_record(out: Path, key: str) -> dict[str, Any]:
    """What the run folder says about itself (status.json): state, steps, losses, outputs."""
    from sjc_core.runs import engine
    from sjc_core.runs import folder as runs_folder

    status = runs_folder.read_status(engine.RunFolder(out / key))
    keep = ("state", "step", "steps", "final_terms", "wall_seconds", "outputs", "error")
    return {k: status[k] for k in keep if k in status}


@dataclass
class Board:
    """The batch's live state: one record per job, a summary line per change, batch.json."""

    jobs: list[Job]
    out: Path
    executor: str
    stream: TextIO
    meta: dict[str, Any] = field(default_factory=dict)
    on_change: Callable[[dict[str, Any]], None] | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    walls: list[float] = field(default_factory=list)
    parallel: int = 1
    began: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        for job in self.jobs:
            self.records[job.key] = {**job.record(), "state": "queued"}

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for record in self.records.values():
            counts[record["state"]] += 1
        return counts

    def eta(self) -> str:
        counts = self.counts()
        left = counts["running"] + counts["queued"]
        if not left:
            return "0:00"
        if not self.walls:
            return "?"
        mean = sum(self.walls) / len(self.walls)
        return "~" + format_seconds(mean * left / max(1, self.parallel, counts["running"]))

    def update(self, key: str, note: str = "", **fields: Any) -> None:
        """Change one run's record, print the summary line and rewrite batch.json + gallery."""
        record = self.records[key]
        record.update(fields)
        counts = self.counts()
        self.parallel = max(self.parallel, counts["running"])
        line = (
            f"batch: {counts['finished']} done, {counts['running']} running, {counts['failed']} failed, "
            f"{counts['interrupted']} interrupted, {counts['queued']} queued of {len(self.records)} | ETA {self.eta()}"
        )
        print(f"{line}  {note}".rstrip(), file=self.stream, flush=True)
        self.save()

    def finish(self, key: str, outcome: dict[str, Any]) -> None:
        """Merge a finished attempt with what its run folder says, then report it."""
        merged = {**folder_record(self.out, key), **{k: v for k, v in outcome.items() if v is not None}}
        state = merged.get("state", "failed")
        if state == "finished" and outcome.get("total_seconds"):
            self.walls.append(float(outcome["total_seconds"]))
        if state != "failed":
            merged.pop("error", None)
        detail = {
            "finished": f" in {duration(outcome.get('total_seconds') or 0)}",
            "failed": f": {merged.get('error', 'unknown error')}",
            "interrupted": f" at step {merged.get('step', '?')} (resumable)",
        }.get(state, "")
        self.update(key, f"{state} {key}{detail}", **merged)

    def document(self) -> dict[str, Any]:
        return {
            "version": 1,
            **self.meta,
            "executor": self.executor,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(time.perf_counter() - self.began, 3),
            "counts": self.counts(),
            "runs": list(self.records.values()),
        }

    def save(self) -> None:
        from sjc_core.files.atomic import write_text  # lazily: Ray's tracker actor never needs torch

        document = self.document()
        write_text(self.out / BATCH_FILE, json.dumps(document, indent=2, default=str) + "\n")
        gallery.write_gallery(self.out, document)
        if self.on_change:
            self.on_change(document)


@dataclass
class BatchOptions:
    out: Path
    address: str | None = None
    use_ray: bool = True
    gpus_per_run: float | None = None
    cpus_per_run: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def run_batch(jobs: list[Job], options: BatchOptions, stream: TextIO | None = None) -> dict[str, Any]:
    """Run every job that is not finished yet; returns the final batch.json document.

    Raises KeyboardInterrupt after saving when the user stopped the batch with Ctrl-C.
    """
    stream = stream or sys.stderr
    out = options.out
    check_batch_folder(out, [job.key for job in jobs])  # the rules of run and fit folders, before any write
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SjcError(f"{out}: cannot create the batch folder ({exc.strerror or exc})") from None
    from sjc_core.files.locks import folder_lock  # lazily, as write_text: Ray's tracker never needs it

    with folder_lock(out, "sjc batch"):
        check_batch_folder(out, [job.key for job in jobs])  # nobody can change it now
        return _run_batch(jobs, options, stream)


def _run_batch(jobs: list[Job], options: BatchOptions, stream: TextIO) -> dict[str, Any]:
    out = options.out
    use_ray = options.use_ray and (options.address is not None or ray_available())
    if options.use_ray and not use_ray:
        print(
            f"sjc: note: Ray is not installed (pip install -e '.[ray]'); running the {len(jobs)} runs "
            "one after another in this process",
            file=stream,
        )
    board = Board(jobs, out, "ray" if use_ray else "in-process", stream, meta=dict(options.meta))
    earlier = _earlier_records(out)
    todo = []
    for job in jobs:
        known = folder_record(out, job.key)
        if known.get("state") == "finished":
            kept = {k: v for k, v in earlier.get(job.key, {}).items() if k in ("total_seconds", "node", "resumed")}
            board.records[job.key].update(kept, **known, skipped=True)
        else:
            todo.append(job)
    skipped = len(jobs) - len(todo)
    runnable = [j for j in todo if not j.error]
    ray = start_ray(options.address) if use_ray and runnable else None  # before writing anything
    try:
        board.update(jobs[0].key, f"planned {len(jobs)} runs in {out}" + (f"; {skipped} already finished" if skipped else ""))
        for job in [j for j in todo if j.error]:
            board.finish(job.key, execute_job(job, str(out)))
        if ray is not None:
            _run_with_ray(ray, runnable, options, board)
        elif runnable:
            _run_in_process(runnable, board)
    finally:
        if ray is not None:
            ray.shutdown()
    return board.document()


def _earlier_records(out: Path) -> dict[str, dict[str, Any]]:
    """Runs recorded by an earlier invocation's batch.json (their total time, node)."""
    try:
        document = json.loads((out / BATCH_FILE).read_text())
        return {run["key"]: run for run in document.get("runs", []) if isinstance(run, dict) and "key" in run}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _run_in_process(jobs: list[Job], board: Board) -> None:
    """One after another; the engine turns Ctrl-C into an interrupted run, then we stop."""
    for job in jobs:
        board.update(job.key, f"running {job.key}", state="running")
        try:
            outcome = execute_job(job, str(board.out))
        except KeyboardInterrupt:  # Ctrl-C outside the training loop (building, turntable)
            state = folder_record(board.out, job.key).get("state")
            outcome = {"state": "interrupted" if state else "queued"}
        board.finish(job.key, outcome)
        if outcome.get("state") in ("interrupted", "queued"):
            print("batch: stopped; run the same command again to continue", file=board.stream)
            raise KeyboardInterrupt


class Tracker:
    """A tiny Ray actor that lets tasks say they started (Ray tells us only when they end)."""

    def __init__(self) -> None:
        self.news: list[str] = []

    def started(self, key: str) -> None:
        self.news.append(key)

    def drain(self) -> list[str]:
        news, self.news = self.news, []
        return news


def start_ray(address: str | None) -> Any:
    """Join a cluster at ``address`` or start a quiet local instance (all CPUs, local GPUs)."""
    import logging

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(
                num_cpus=os.cpu_count() or 1,
                include_dashboard=False,
                object_store_memory=256 * 1024**2,
                **quiet,
            )
    except ConnectionError as exc:
        raise SjcError(f"--address {address}: cannot reach a Ray cluster there ({exc})") from None
    except ValueError as exc:  # ray:// without the client extra, malformed addresses
        first = str(exc).splitlines()[0].rstrip(".") if str(exc) else type(exc).__name__
        hint = "; or run sjc batch on a cluster node with --address auto" if address and address.startswith("ray://") else ""
        raise SjcError(f"--address {address}: {first}{hint}") from None
    return ray


def _run_with_ray(ray: Any, jobs: list[Job], options: BatchOptions, board: Board) -> None:
    """Submit every job as a task at once and let Ray place them; report as they end."""
    resources = ray.cluster_resources()
    gpus = options.gpus_per_run
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    cpus = resources.get("CPU", 1)
    board.parallel = max(1, int(cpus // options.cpus_per_run))
    if gpus:
        board.parallel = min(board.parallel, int(resources.get("GPU", 0) // gpus) or 1)
    board.meta.update(
        ray={"address": options.address or "local", "cpus": cpus, "gpus": resources.get("GPU", 0)},
        gpus_per_run=gpus,
        cpus_per_run=options.cpus_per_run,
    )
    tracker = ray.remote(num_cpus=0)(Tracker).remote()
    task = ray.remote(execute_job).options(num_cpus=options.cpus_per_run, num_gpus=gpus, max_retries=0)
    pending = {task.remote(job, str(board.out), tracker): job for job in jobs}
    try:
        _collect(ray, pending, tracker, board)
    except KeyboardInterrupt:
        _stop(ray, pending, board)
        raise


def _collect(ray: Any, pending: dict[Any, Job], tracker: Any, board: Board) -> None:
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        for key in ray.get(tracker.drain.remote()):
            if board.records[key]["state"] == "queued":
                board.update(key, f"started {key}", state="running")
        for ref in done:
            job = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as exc:  # the worker died (out of memory, node lost...)
                outcome = {"state": "failed", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            board.finish(job.key, outcome)


def _stop(ray: Any, pending: dict[Any, Job], board: Board, grace: float = 120.0) -> None:
    """Ctrl-C: ask running runs to checkpoint and stop, drop queued ones, record the result."""
    print("batch: stopping (running runs write a checkpoint; Ctrl-C again to quit at once)", file=board.stream)
    for ref in pending:
        ray.cancel(ref, force=False)
    try:
        ray.wait(list(pending), num_returns=len(pending), timeout=grace)
    except KeyboardInterrupt:
        pass
    for ref, job in pending.items():
        known = folder_record(board.out, job.key)
        state = known.get("state")
        if state in ("interrupted", "finished", "failed"):
            board.records[job.key].update(known)
        else:  # never started, or stopped before its first checkpoint
            board.records[job.key]["state"] = "queued" if state is None else "interrupted"
    if pending:
        board.update(next(iter(pending.values())).key, "batch: stopped; run the same command again to continue")


def summary_table(document: dict[str, Any]) -> str:
    """The final per-run table printed at the end of a batch."""
    lines = []
    for record in document["runs"]:
        terms = record.get("final_terms") or {}
        losses = " ".join(f"{k} {v:.3g}" for k, v in terms.items())
        wall = record.get("total_seconds") or record.get("wall_seconds")
        extra = record.get("error", "") if record["state"] == "failed" else losses
        lines.append(
            f"{record['state']:<11} {record['key']:<40} {duration(wall) if wall else '-':>8}  {extra}".rstrip()
        )
    return "\n".join(lines)
