"""Scale-out benchmark (issue 11): requests/s and p50/p99 at 1, 8 and 32 concurrent clients for

- adamix-serve, one process;
- adamix-serve --ray (Ray Serve) with 1 replica and with 2 replicas;
- a real Triton Inference Server (adamix-triton's python-backend layout; the tests' tritonserver from the
  nvidia-pytriton wheel, tests/triton_server.py) with dynamic batching on and off;

on the same export (MiniLM-L6 merged LoRA, SST-2: benchmarks/results/tmp/cls-lora.onnx, made by
``bench_export.py build --only cls-lora`` when missing), with the same sentences and the same request bytes: one
SST-2 dev sentence per request as the Open Inference Protocol's JSON body (``POST /v2/models/NAME/infer``, which
adamix-serve and Triton both answer), sent by bench_serve.py's load generator in its own process.

    python benchmarks/bench_scale_out.py all            # every server alone, one after the other; then report
    python benchmarks/bench_scale_out.py all --quick    # a few requests each: checks the whole path end to end
    python benchmarks/bench_scale_out.py report         # the table, the scaling figures and the plot again

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))  # triton_server.py: the Triton server the tests run

from bench_serve import BIN, CLS, CONCURRENCY, KSERVE_BODY, REQUESTS, RESULTS, WORK, Server, load  # noqa: E402
from triton_server import TritonServer, TritonUnavailable, ensure_triton  # noqa: E402

QUICK_REQUESTS = {1: 20, 8: 40, 32: 96}
PROJECTED_CORES = (4, 8, 16)
# how each engine grows with cores, and the measured row its CPU cost per request is taken from
SCALE_OUT_UNITS = {
    "adamix-serve, one process per core behind a load balancer": "adamix-serve, 1 process",
    "Ray Serve, one replica per core": "Ray Serve, 2 replicas",
    "Triton (dynamic batching), instances over the cores": "Triton, dynamic batching on",
}
REPLICA_HEADER = "x-adamix-replica"  # adamix_deploy.serving.ray_deployment's header (imported there with ray)
CORES = os.cpu_count() or 1


# -- servers ---------------------------------------------------------------------------------------------------
class Started:
    """A server under test: its URL, readiness time, process-tree memory and how to stop it."""

    def __init__(self, url: str, ready_s: float, pid: int, stop):
        self.url, self.ready_s, self.pid, self._stop = url, ready_s, pid, stop

    def stop(self) -> None:
        self._stop()


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (Ray's and Triton's servers are several processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process just ended
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def tree_rss_mib(pid: int) -> float:
    """Resident memory of the server's processes (pages they share are counted in each)."""
    total = 0
    for current in process_tree(pid):
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{current}/status").read_text().splitlines())
            total += int(fields["VmRSS"].split()[0])
        except (OSError, KeyError, ValueError):
            continue
    return round(total / 1024, 1)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the server's processes have used so far."""
    ticks = 0
    for current in process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def measured_load(server: Started, url: str, concurrency: int, count: int) -> dict:
    """bench_serve's load generator, plus the CPU time the server and the load generator spent on it: on a
    machine this small they share the cores, and CPU per request is what a larger machine divides its cores by."""
    server_cpu, client_cpu = tree_cpu_s(server.pid), _children_cpu_s()
    result = load(url, concurrency, count, KSERVE_BODY)
    result["server_cpu_s"] = round(tree_cpu_s(server.pid) - server_cpu, 2)
    result["client_cpu_s"] = round(_children_cpu_s() - client_cpu, 2)
    # the load generator's 16 untimed warm-up requests are in the CPU time too
    result["server_cpu_ms_per_request"] = round(1000 * result["server_cpu_s"] / (count + min(16, count)), 2)
    return result


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children: the load generator runs
    return usage.ru_utime + usage.ru_stime


def adamix(port: int, *options: str, replicas: int = 0) -> Started:
    """adamix-serve over the export; with ``replicas``, ``--ray`` with that many, sharing the cores."""
    command = [str(BIN / "adamix-serve"), str(CLS), "--port", str(port), "--log-level", "warning", *options]
    if replicas:
        command += ["--ray", "--replicas", str(replicas), "--replica-cpus", f"{CORES / replicas:g}"]
    start = time.perf_counter()
    server = Server(command, "/ready", port)
    if replicas:
        wait_for_replicas(server.url, replicas)
    return Started(server.url, round(time.perf_counter() - start, 2), server.proc.pid, server.stop)


def wait_for_replicas(url: str, replicas: int, timeout: float = 300) -> None:
    """/ready answers once one replica is up; wait until ``replicas`` different ones have answered."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < replicas:
        if time.monotonic() > deadline:
            sys.exit(f"only {len(seen)} of {replicas} Ray replicas answered within {timeout} s")
        response = httpx.get(url + "/ready", timeout=10)
        seen.add(response.headers.get(REPLICA_HEADER, ""))
        time.sleep(0.05)


def triton(dynamic_batching: bool, work: Path) -> Started:
    install = ensure_triton()
    repo = work / f"triton-{'on' if dynamic_batching else 'off'}"
    command = [str(BIN / "adamix-triton"), str(CLS), "--output", str(repo), "--layout", "python",
               "--python-env", str(install / "stub-env"), "--overwrite"]  # fmt: skip
    if not dynamic_batching:
        command.append("--no-dynamic-batching")
    subprocess.run(command, check=True, capture_output=True, text=True)
    start = time.perf_counter()
    server = TritonServer(install, repo, work)
    return Started(server.url, round(time.perf_counter() - start, 2), server.proc.pid, server.stop)


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
        subprocess.run([sys.executable, str(ROOT / "bench_export.py"), "build", "--only", "cls-lora"], check=True)
    counts = QUICK_REQUESTS if quick else REQUESTS
    try:
        ensure_triton()
    except TritonUnavailable as e:
        sys.exit(f"the Triton server cannot be installed here: {e}")
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
                row["rss_mib"] = tree_rss_mib(server.pid)
            finally:
                server.stop()
            row["seconds"] = round(time.perf_counter() - started_at, 1)
            results["rows"].append(row)
    results["scaling"] = scaling(results["rows"])
    output(quick).with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    report(quick)


def check_answer(url: str) -> None:
    """One request before timing: the server answers the body with a label, or the run stops here."""
    body = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["a lovely film"]}]}
    response = httpx.post(url, json=body, timeout=60)
    outputs = {o["name"] for o in response.json().get("outputs", [])} if response.status_code == 200 else set()
    if "label" not in outputs:
        sys.exit(f"{url} answered {response.status_code}: {response.text[:300]}")


def scaling(rows: list[dict]) -> dict:
    """What the curve says, at the highest concurrency: ratios between configurations, how much of the machine
    the load generator took, the server's CPU time per request, and a projection to more cores (marked as such:
    not measured)."""
    top = {row["server"]: row[f"c{CONCURRENCY[-1]}"] for row in rows}
    rps = {name: r["throughput_rps"] for name, r in top.items()}
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
        "client_cores": {name: round(r["client_cpu_s"] * r["throughput_rps"] / r["requests"], 2) for name, r in top.items()},
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
    print(f"\nMiniLM-L6 merged LoRA, SST-2 sentences, one per request, /v2 JSON, {results['machine']}{kind}")
    head = " | ".join(f"c={c} p50 / p99 ms | c={c} req/s" for c in CONCURRENCY)
    top = CONCURRENCY[-1]
    print(
        f"| server | ready s | RSS MiB (all processes) | {head} | server CPU ms / request (c={top}) | failures |"
    )
    print("|" + "---|" * (5 + 2 * len(CONCURRENCY)))
    for row in results["rows"]:
        cells = [row["server"], str(row["ready_s"]), str(row["rss_mib"])]
        for c in CONCURRENCY:
            r = row[f"c{c}"]
            cells += [f"{r['p50_ms']} / {r['p99_ms']}", str(r["throughput_rps"])]
        cells.append(str(row[f"c{top}"]["server_cpu_ms_per_request"]))
        cells.append(str(sum(row[f"c{c}"]["failures"] for c in CONCURRENCY)))
        print("| " + " | ".join(cells) + " |")
    s = results["scaling"]
    print(f"\nat {top} concurrent clients: Ray 2 replicas / 1 replica {s['ray_2_vs_1_replica']}x; Ray 1 replica / "
          f"one process {s['ray_1_replica_vs_one_process']}x; Triton dynamic batching on / off "
          f"{s['triton_batching_on_vs_off']}x; Triton (on) / one process {s['triton_on_vs_one_process']}x")  # fmt: skip
    print(f"cores the load generator took (of {CORES}): {s['client_cores']}")
    print(f"requests per second of server CPU: {s['requests_per_server_cpu_s']}")
    print(f"reading: the load generator and every server share the same {CORES} cores, so a second replica or "
          "instance adds a process, not compute; on this machine the curves show each engine's overhead per "
          "request (CPU ms / request above) and its batching, and scale-out appears only with more cores.")  # fmt: skip
    print("PROJECTION (not measured: requests per server-CPU second x cores, the client elsewhere):")
    for unit, projected in s["projection_requests_per_s"].items():
        print(f"  {unit:58s} " + ", ".join(f"{cores} cores ~{value} req/s" for cores, value in projected.items()))
    _plot(results, output(quick).with_suffix(".png"))


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
    for row in results["rows"]:
        left.plot(
            CONCURRENCY, [row[f"c{c}"]["throughput_rps"] for c in CONCURRENCY], marker="o", label=row["server"]
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
