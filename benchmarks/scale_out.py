"""How do the ways to scale out compare on one export? Requests/s and p50/p99 at 1, 8 and 32 concurrent clients for

- adamix-serve, one process;
- adamix-serve --ray (Ray Serve) with 1 replica and with 2 replicas;
- a real Triton Inference Server (adamix-triton's python-backend layout; the tests' tritonserver from the
  nvidia-pytriton wheel, `adamix_deploy.testing.triton_server`) with dynamic batching on and off;

on the same export (MiniLM-L6 merged LoRA, SST-2: benchmarks/results/tmp/cls-lora.onnx, made by
``python -m benchmarks.merged_exports build --only cls-lora`` when missing), with the same sentences and the same
request bytes: one SST-2 dev sentence per request as the Open Inference Protocol's JSON body
(``POST /v2/models/NAME/infer``, which adamix-serve and Triton both answer), sent by the common load generator
(`benchmarks.common.load`) in its own process.

    python -m benchmarks.scale_out all            # every server alone, one after the other; then report
    python -m benchmarks.scale_out all --quick    # a few requests each: checks the whole path end to end
    python -m benchmarks.scale_out report         # the tables (and docs/benchmarks/scale-out.md), the plot

Every configuration uses the machine's cores once: adamix-serve and Triton leave onnxruntime its default threads
(one per core), Ray's single replica reserves all cores (``--replica-cpus``, which also sets its onnxruntime
threads), two replicas half each. Batching at each server's defaults: adamix-serve and Ray up to 32 inputs with no
added wait; Triton up to 32, preferred 4/8/16, 500 us queue delay, or none. Results: results/scale_out.json and
results/scale_out.png (``--quick``: results/tmp/scale_out_quick.*, so a check never replaces a real run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import httpx

from adamix_deploy.testing.processes import ServiceProcess
from adamix_deploy.testing.triton_server import TritonServer, TritonUnavailable, ensure_triton
from benchmarks.common.load import (
    CONCURRENCY,
    REQUESTS,
    kserve_body,
    load,
    load_cells,
    load_columns,
    sentence_requests,
)
from benchmarks.common.pages import Markdown, publish
from benchmarks.common.paths import RESULTS, WORK
from benchmarks.common.plots import pyplot, save
from benchmarks.common.servers import BIN, Server, tree_cpu_s, tree_rss_mib
from benchmarks.common.subprocesses import command, step
from benchmarks.merged_exports import export_folder

QUICK_REQUESTS = {1: 20, 8: 40, 32: 96}
PROJECTED_CORES = (4, 8, 16)
# how each engine grows with cores, and the measured row its CPU cost per request is taken from
SCALE_OUT_UNITS = {
    "adamix-serve, one process per core behind a load balancer": "adamix-serve, 1 process",
    "Ray Serve, one replica per core": "Ray Serve, 2 replicas",
    "Triton (dynamic batching), instances over the cores": "Triton, dynamic batching on",
}
REPLICA_HEADER = "x-adamix-replica"  # adamix_deploy.serving's Ray deployment header (imported there with ray)
CORES = os.cpu_count() or 1
CLS = export_folder("cls-lora")


def measured_load(server: ServiceProcess, url: str, concurrency: int, count: int) -> dict:
    """The load generator, plus the CPU time the server and the load generator spent on it: on a machine this
    small they share the cores, and CPU per request is what a larger machine divides its cores by."""
    server_cpu, client_cpu = tree_cpu_s(server.proc.pid), _children_cpu_s()
    result = load(sentence_requests(url, count, kserve_body), concurrency)
    result["server_cpu_s"] = round(tree_cpu_s(server.proc.pid) - server_cpu, 2)
    result["client_cpu_s"] = round(_children_cpu_s() - client_cpu, 2)
    # the load generator's untimed warm-up requests are in the CPU time too
    result["server_cpu_ms_per_request"] = round(1000 * result["server_cpu_s"] / (count + result["warmup"]), 2)
    return result


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children: the load generator runs
    return usage.ru_utime + usage.ru_stime


def adamix(port: int, *options: str, replicas: int = 0) -> Server:
    """adamix-serve over the export; with ``replicas``, ``--ray`` with that many, sharing the cores. Ready (and
    ``ready_s``) once every replica has answered."""
    command = [str(BIN / "adamix-serve"), str(CLS), "--port", str(port), "--log-level", "warning", *options]
    if replicas:
        command += ["--ray", "--replicas", str(replicas), "--replica-cpus", f"{CORES / replicas:g}"]
    server = Server(command, "/ready", port)
    if replicas:
        wait_for_replicas(server.url, replicas)
        server.ready_s = round(time.monotonic() - server.started, 2)
    return server


def wait_for_replicas(url: str, replicas: int, timeout: float = 300) -> None:
    """/ready answers once one replica is up; wait until ``replicas`` different ones have answered."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < replicas:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(seen)} of {replicas} Ray replicas answered within {timeout} s")
        response = httpx.get(url + "/ready", timeout=10)
        seen.add(response.headers.get(REPLICA_HEADER, ""))
        time.sleep(0.05)


def triton(dynamic_batching: bool, work: Path) -> TritonServer:
    install = ensure_triton()
    repo = work / f"triton-{'on' if dynamic_batching else 'off'}"
    options = ["--no-dynamic-batching"] if not dynamic_batching else []
    command("adamix-triton", CLS, "--output", repo, "--layout", "python", "--python-env", install / "stub-env",
            "--overwrite", *options)  # fmt: skip
    server = TritonServer(install, repo, work)
    server.ready_s = round(server.ready_s, 2)
    return server


SERVERS = {
    "adamix-serve, 1 process": lambda work: adamix(8201),
    "Ray Serve, 1 replica": lambda work: adamix(8202, replicas=1),
    "Ray Serve, 2 replicas": lambda work: adamix(8203, replicas=2),
    "Triton, dynamic batching on": lambda work: triton(True, work),
    "Triton, dynamic batching off": lambda work: triton(False, work),
}


# -- the benchmark ---------------------------------------------------------------------------------------------
def run_all(quick: bool) -> None:
    if not (CLS / "adamix_manifest.json").exists():
        step("benchmarks.merged_exports", "build", "--only", "cls-lora")
    counts = QUICK_REQUESTS if quick else REQUESTS
    try:
        ensure_triton()
    except TritonUnavailable as e:
        raise SystemExit(f"the Triton server cannot be installed here: {e}") from None
    url_path = f"/v2/models/{CLS.name}/infer"
    results: dict = {"machine": f"{CORES} CPU cores", "quick": quick, "requests": counts, "rows": []}
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        for name, start in SERVERS.items():
            started_at = time.perf_counter()
            server = start(Path(tmp))
            try:
                check_answer(server.url + url_path)
                row = {"server": name, "ready_s": server.ready_s}
                for c in CONCURRENCY:
                    row[f"c{c}"] = measured_load(server, server.url + url_path, c, counts[c])
                    print(f"{name:30s} c={c:2d}: {row[f'c{c}']}", flush=True)
                row["rss_mib"] = tree_rss_mib(server.proc.pid)
            finally:
                server.stop()
            row["seconds"] = round(time.perf_counter() - started_at, 1)
            results["rows"].append(row)
    results["scaling"] = scaling(results["rows"])
    output(quick).with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    report(quick)


def check_answer(url: str) -> None:
    """One request before timing: the server answers the body with a label, or the run stops here."""
    response = httpx.post(url, json=kserve_body("a lovely film"), timeout=60)
    outputs = {o["name"] for o in response.json().get("outputs", [])} if response.status_code == 200 else set()
    if "label" not in outputs:
        raise SystemExit(f"{url} answered {response.status_code}: {response.text[:300]}")


def scaling(rows: list[dict]) -> dict:
    """What the curve says, at the highest concurrency: ratios between configurations, how much of the machine
    the load generator took, the server's CPU time per request, and a projection to more cores (marked as such:
    not measured)."""
    top = {row["server"]: row[f"c{CONCURRENCY[-1]}"] for row in rows}
    rps = {name: r["requests_per_s"] for name, r in top.items()}
    # requests per second of server CPU: what one core does when the server has it to itself
    per_core = {name: round(1000 / r["server_cpu_ms_per_request"], 1) for name, r in top.items()}
    return {
        "at_concurrency": CONCURRENCY[-1],
        "ray_2_vs_1_replica": _ratio(rps, "Ray Serve, 2 replicas", "Ray Serve, 1 replica"),
        "ray_1_replica_vs_one_process": _ratio(rps, "Ray Serve, 1 replica", "adamix-serve, 1 process"),
        "triton_batching_on_vs_off": _ratio(rps, "Triton, dynamic batching on", "Triton, dynamic batching off"),
        "triton_on_vs_one_process": _ratio(rps, "Triton, dynamic batching on", "adamix-serve, 1 process"),
        "requests_per_s_per_machine_core": {name: round(value / CORES, 1) for name, value in rps.items()},
        "server_cpu_ms_per_request": {name: r["server_cpu_ms_per_request"] for name, r in top.items()},
        # the load generator's CPU seconds over the timed wall time: cores the servers did not get
        "client_cores": {name: round(r["client_cpu_s"] * r["requests_per_s"] / r["requests"], 2) for name, r in top.items()},
        "requests_per_server_cpu_s": per_core,
        # one process / replica / instance per core, each as fast as a core here with the client elsewhere and
        # the HTTP front keeping up: an upper bound, not a measurement
        "projection_requests_per_s": {
            unit: {str(cores): round(per_core[row] * cores) for cores in PROJECTED_CORES}
            for unit, row in SCALE_OUT_UNITS.items()
            if row in per_core
        },
    }  # fmt: skip


def _ratio(rps: dict, a: str, b: str) -> float | None:
    return round(rps[a] / rps[b], 2) if rps.get(a) and rps.get(b) else None


def output(quick: bool) -> Path:
    return WORK / "scale_out_quick" if quick else RESULTS / "scale_out"


def report(quick: bool = False) -> None:
    results = json.loads(output(quick).with_suffix(".json").read_text())
    kind = " (--quick: a few requests each, not a measurement)" if results["quick"] else ""
    out = Markdown()
    out(f"MiniLM-L6 merged LoRA, SST-2 sentences, one per request, /v2 JSON, {results['machine']}{kind}\n")
    top = CONCURRENCY[-1]
    header = ["server", "ready s", "RSS MiB (all its processes)"]
    header += [*load_columns(), f"server CPU ms / request (c={top})", "failures"]
    rows = [[row["server"], row["ready_s"], row["rss_mib"], *load_cells(row), row[f"c{top}"]["server_cpu_ms_per_request"],
             sum(row[f"c{c}"]["failures"] for c in CONCURRENCY)] for row in results["rows"]]  # fmt: skip
    out.table(header, rows)
    s = results["scaling"]
    out(f"\nAt {top} concurrent clients: Ray 2 replicas / 1 replica {s['ray_2_vs_1_replica']}x; Ray 1 replica / "
        f"one process {s['ray_1_replica_vs_one_process']}x; Triton dynamic batching on / off "
        f"{s['triton_batching_on_vs_off']}x; Triton (on) / one process {s['triton_on_vs_one_process']}x.\n")  # fmt: skip
    servers = list(s["client_cores"])
    out.table(["server", f"cores the load generator took (of {results['machine'].split()[0]})", "requests per second of server CPU"],
              [[n, s["client_cores"][n], s["requests_per_server_cpu_s"][n]] for n in servers])  # fmt: skip
    out("\nPROJECTION, not measured (requests per server-CPU second x cores, the clients elsewhere):\n")
    out.table(["unit", *(f"{cores} cores, req/s" for cores in PROJECTED_CORES)],
              [[unit, *(f"~{v}" for v in projected.values())]
               for unit, projected in s["projection_requests_per_s"].items()])  # fmt: skip
    publish(out, "scale-out.md", "scale-out", write=not quick)
    _plot(results, output(quick).with_suffix(".png"))


def _plot(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
    for row in results["rows"]:
        left.plot(
            CONCURRENCY, [row[f"c{c}"]["requests_per_s"] for c in CONCURRENCY], marker="o", label=row["server"]
        )
        middle.plot(CONCURRENCY, [row[f"c{c}"]["p99_ms"] for c in CONCURRENCY], marker="o", label=row["server"])
    for unit, projected in results["scaling"]["projection_requests_per_s"].items():
        right.plot(PROJECTED_CORES, list(projected.values()), linestyle="--", marker=".", label=unit)
    left.set(xlabel="concurrent clients", ylabel="requests / s", title=f"Throughput ({results['machine']})")
    middle.set(xlabel="concurrent clients", ylabel="p99 latency, ms", title="p99 latency", yscale="log")
    right.set(xlabel="cores", ylabel="requests / s", title="PROJECTION (not measured)")
    for ax in (left, middle):
        ax.set_xscale("log")
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    for ax in (left, middle, right):
        ax.legend(fontsize=7)
    save(fig, path, 110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("all").add_argument("--quick", action="store_true", help="a few requests per server")
    sub.add_parser("report").add_argument("--quick", action="store_true", help="the --quick run's results")
    args = parser.parse_args()
    if args.command == "all":
        run_all(args.quick)
    else:
        report(args.quick)


if __name__ == "__main__":
    main()
