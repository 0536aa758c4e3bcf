"""README command 1 (`adamix-quickstart`): every stage once, on the demo data that ships in `data/`.

It spans the pipeline: trains in-process (`adamix_deploy`), exports through `adamix_deploy.exporters`, then starts
`adamix-serve` and `adamix-demo` as child processes, as a user would.
"""
