"""Helpers that start real processes, shared by the tests, the benchmarks and the quickstart (as numpy.testing is
numpy's): `processes` (the readiness wait, an HTTP service in a subprocess, adamix-serve on a free port) and
`triton_server` (a real Triton Inference Server). The standard library only, so that every install can import
them, the torch-free [serve] install included."""
