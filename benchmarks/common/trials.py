"""Trials: training runs recorded one JSON line each in a runs file as they finish, so that a benchmark can be
interrupted and continued (a re-run skips every trial already recorded), spread over sessions (``--limit N``)
or over worker processes (``--workers N``).

A benchmark's protocol says what to run next from what is done (`Protocol.plan`: tuning first, the final seeds
once the tuning has chosen, seed by seed so that an interruption leaves complete pairs), how to run one trial
and how to describe its row; `run_trials` asks it again after every batch until nothing is left to run."""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Trial:
    phase: str  # tune | final
    arm: str
    lr: float
    epochs: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.phase}|{self.arm}|{self.lr:g}|{self.epochs}|{self.seed}"


def read_records(path: Path) -> list[dict]:
    """The rows of a runs file, in the order they finished (none when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_record(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


class Protocol:
    """One benchmark's plan, over one runs file. Subclasses set ``runs_file`` and implement the methods."""

    runs_file: str

    def key(self, trial: Trial) -> str:
        """The trial's key in the runs file."""
        return trial.key

    def record(self, trial: Trial) -> dict:
        """The fields every row of this trial starts with."""
        return {**asdict(trial), "key": self.key(trial)}

    def prepare(self, options: argparse.Namespace) -> Any:
        """What every trial needs (splits, paths), made once per `run_trials`; passed to `run_one`."""
        return None

    def plan(self, done: dict[str, dict], options: argparse.Namespace) -> list[Trial]:
        """The trials to run next, given the rows done so far (by key); done ones may be listed."""
        raise NotImplementedError

    def run_one(self, trial: Trial, prepared: Any, options: argparse.Namespace) -> dict:
        """Train and score one trial; the row to record (`record` plus the results)."""
        raise NotImplementedError

    def describe(self, row: dict) -> str:
        """One progress line for a finished row."""
        return f"{row['key']}: {row.get('train_seconds', '?')} s"

    def runs_path(self, options: argparse.Namespace) -> Path:
        return Path(options.results) / self.runs_file

    def done(self, options: argparse.Namespace) -> dict[str, dict]:
        return {row["key"]: row for row in read_records(self.runs_path(options))}


def run_trials(protocol: Protocol, options: argparse.Namespace) -> None:
    """Run what the plan still needs, then ask it again (a finished tuning opens the final runs), until nothing is
    left, ``options.limit`` trials ran (0: no limit) or a whole batch failed. One failed trial is reported and
    the others go on; it is tried again on the next call."""
    prepared = protocol.prepare(options)
    left = options.limit or None
    while left is None or left > 0:
        done = protocol.done(options)
        plan = protocol.plan(done, options)
        todo = [trial for trial in plan if protocol.key(trial) not in done][:left]
        print(f"{len(todo)} runs to do ({len(plan) - len(todo)} of this plan done or left for later)", flush=True)
        if not todo or not _execute(protocol, todo, prepared, options):
            return
        if left is not None:
            left -= len(todo)


def _execute(protocol: Protocol, todo: list[Trial], prepared: Any, options: argparse.Namespace) -> int:
    """Run ``todo`` (in this process, or over ``options.workers`` spawned processes); returns how many finished."""
    finished = 0

    def record(trial: Trial, outcome) -> None:
        nonlocal finished
        try:
            row = outcome()
        except Exception as e:
            print(f"FAILED {protocol.key(trial)}: {type(e).__name__}: {e}", flush=True)
            return
        append_record(protocol.runs_path(options), row)
        finished += 1
        print(protocol.describe(row), flush=True)

    if options.workers <= 1:
        for trial in todo:
            record(trial, lambda trial=trial: protocol.run_one(trial, prepared, options))
        return finished
    with ProcessPoolExecutor(options.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(protocol.run_one, trial, prepared, options): trial for trial in todo}
        for future in as_completed(futures):
            record(futures[future], future.result)
    return finished


def add_trial_options(parser: argparse.ArgumentParser) -> None:
    """The options every trial benchmark takes."""
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per run")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (spawned processes)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many runs now (0: all)")
