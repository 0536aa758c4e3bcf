"""Benchmarks: each script measures one question, writes its results under benchmarks/results/ and, in its
`report` step, the tables of its page under docs/benchmarks/. Run them as modules from the repository root,
e.g. ``python -m benchmarks.serving_throughput report``; what they share is in `benchmarks.common`."""
