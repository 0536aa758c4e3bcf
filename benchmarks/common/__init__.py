"""What the benchmarks share:

- `paths`: where results, scratch files, data and the docs pages are;
- `subprocesses`: one measurement per fresh process (``python -m benchmarks.X ...``), the project's commands;
- `servers`: a server under test (adamix-serve, a baseline) started and made ready through
  `adamix_deploy.testing.processes`, and its memory and CPU time;
- `load`: the requests (SST-2 sentences, E2E records) and the one load generator, in a process of its own;
- `trials`: trial records (one JSON line per finished run), resume, the plan-and-run loop and its options;
- `stats`: t-intervals and paired differences;
- `plots`: matplotlib without a display, means with intervals, paired differences;
- `pages`: a report's markdown, printed and written between markers into its docs/benchmarks page.
"""
