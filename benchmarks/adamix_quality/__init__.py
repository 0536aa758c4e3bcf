"""Does AdaMix, merged to one module's serving cost, beat the single module trained the same way?

One benchmark over four tasks, each with its protocol (fixed before any run; the module docstrings say it in
full) and its runs file, all run by the common trial runner (`benchmarks.common.trials`):

- ``sst2`` (`sst2.py`): MiniLM-L6, nine arms (single adapter / LoRA, their consistency-only controls, AdaMix at
  the single module's budget and at twice it, PEFT LoRA), every arm tuned on validation, 8 final seeds;
- ``cola``, ``stsb`` (`glue.py`): the same model, the best AdaMix arms against their single modules with the
  SST-2 settings, 3 seeds, and the single modules at AdaMix's epochs as a control;
- ``e2e`` (`e2e.py`): SmolLM2-135M with the official NLG recipe scaled down, each arm's learning rate checked
  on validation, 3 seeds.

    python -m benchmarks.adamix_quality splits --task sst2|cola|stsb     # the seeded splits (../shared/data)
    python -m benchmarks.adamix_quality run --task sst2|cola|stsb|e2e    # what the plan still needs
        [--workers N] [--threads T] [--device cuda] [--limit N]        # (tuning, then the final seeds)
    python -m benchmarks.adamix_quality report [--task ...]             # tables, JSON summary, plot, docs page
    python -m benchmarks.adamix_quality timing --task e2e [--steps 4]    # step times and the plan's projection
    python -m benchmarks.adamix_quality run --task e2e --quick           # tiny sizes, results in results/tmp/

Every run appends one JSON line to its runs file in benchmarks/results/ as it finishes; a re-run skips the
runs already there, so an interrupted benchmark continues where it stopped. CoLA and STS-B run after the SST-2
tuning (their settings come from it). `report` writes the tables into docs/benchmarks/adamix-quality.md.
"""
