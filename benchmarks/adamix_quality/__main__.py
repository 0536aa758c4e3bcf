"""The command line of `benchmarks.adamix_quality` (its docstring says how to use it)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import benchmarks.adamix_quality as package
from benchmarks.adamix_quality.e2e import QUICK_RESULTS, E2EGeneration
from benchmarks.adamix_quality.glue import Glue
from benchmarks.adamix_quality.sst2 import SST2
from benchmarks.common.pages import publish
from benchmarks.common.paths import DATA, RESULTS
from benchmarks.common.trials import Protocol, add_trial_options, read_records, run_trials

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TASKS = ("sst2", "cola", "stsb", "e2e")
PAGE = "adamix-quality.md"


def protocol(task: str, quick: bool = False) -> Protocol:
    if task == "sst2":
        return SST2()
    if task in ("cola", "stsb"):
        return Glue(task)
    return E2EGeneration(quick)


def report(task: str, options: argparse.Namespace) -> None:
    """The task's family (CoLA and STS-B report together): summary JSON, plot and tables; the tables also go into
    the docs page, unless the results are not the committed ones."""
    chosen = protocol(task, options.quick)
    results = Path(options.results)
    rows = read_records(results / chosen.runs_file)
    if not rows:
        raise SystemExit(f"no runs in {results / chosen.runs_file} yet: nothing to report")
    summary_path = results / chosen.summary_file
    previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary, markdown = chosen.report(rows, options, previous)
    summary_path.write_text(json.dumps(summary, indent=1))
    chosen.plot(summary, results / chosen.plot_file)
    block = {"sst2": "sst2", "cola": "glue", "stsb": "glue", "e2e": "e2e"}[task]
    publish(markdown, PAGE, block, write=results == RESULTS and not options.quick)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=package.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("phase", choices=["splits", "run", "report", "timing"])
    parser.add_argument("--task", choices=TASKS, help="required but for `report` (default: every task)")
    parser.add_argument("--data", default=str(DATA), help="../shared/data")
    parser.add_argument("--splits", default=None, help="where the splits are written (default: under results/tmp)")
    parser.add_argument("--results", default=None, help=f"runs and summaries (default {RESULTS})")
    parser.add_argument("--sst2-results", default=str(RESULTS), help="cola, stsb: where the SST-2 tuning runs are")
    parser.add_argument("--model", default=None, help="sst2, cola, stsb: packaged name or folder (minilm)")
    parser.add_argument("--quick", action="store_true", help="e2e: tiny sizes, results under results/tmp/")
    parser.add_argument("--steps", type=int, default=4, help="timing: steps measured per arm")
    parser.add_argument("--eval-mrs", type=int, default=32, help="timing: MRs decoded to time the evaluation")
    add_trial_options(parser)
    options = parser.parse_args()
    options.quick = options.quick or os.environ.get("ADAMIX_E2E_QUICK") == "1"
    if options.phase != "report" and options.task is None:
        parser.error(f"{options.phase} needs --task")
    if options.quick and options.task not in (None, "e2e"):
        parser.error("--quick is for --task e2e")
    if options.phase == "timing" and options.task != "e2e":
        parser.error("timing is for --task e2e")
    if options.results is None:
        options.results = str(QUICK_RESULTS if options.quick else RESULTS)
    if options.phase == "report":
        every = ("e2e",) if options.quick else ("sst2", "cola", "e2e")  # cola reports stsb too
        for task in [options.task] if options.task else every:
            report(task, _with_defaults(options, protocol(task, options.quick)))
        return
    chosen = protocol(options.task, options.quick)
    options = _with_defaults(options, chosen)
    if options.phase == "splits":
        if not Path(options.data).is_dir():
            raise SystemExit(f"skipped: {options.data} not found (the real data sets live in ../shared/data)")
        print(json.dumps(chosen.splits(options), indent=1))
    elif options.phase == "timing":
        chosen.timing(options)
    else:
        Path(options.results).mkdir(parents=True, exist_ok=True)
        run_trials(chosen, options)


def _with_defaults(options: argparse.Namespace, chosen: Protocol) -> argparse.Namespace:
    """The options with the task's own defaults where none was given."""
    splits = options.splits or (chosen.default_splits and str(chosen.default_splits))
    return argparse.Namespace(
        **{
            **vars(options),
            "splits": splits,
            "model": options.model or chosen.default_model,
            "threads": options.threads or chosen.default_threads,
        }
    )


if __name__ == "__main__":
    main()
