"""Load test of `recfm serve` on loopback: p50/p99 latency and requests/s at several concurrencies.

    python benchmarks/serve_load.py                        # the three tiny CPU runs below, trained if absent
    python benchmarks/serve_load.py --run runs/my-run       # any finished run

The tiny CPU runs: SASRec on MovieLens-100K (a few seconds of training), the textual-ID
recommender of `make demo` (configs/textid-movielens-100k-demo.yaml, the item-level formulation, a
3-minute budget) and the whole-sequence formulation (configs/textid-movielens-100k-sequence.yaml, a
causal LM from a config, KV-cached decoding; its time cap cut to 3 minutes), whose every answer is
a trie-constrained beam search.

For each run: starts `recfm serve` in its own process, warms it up, then for each concurrency
level C runs C clients that send `POST /recommend` back to back (real user histories of the
run's dataset, k=10, exclude_history) until ``--requests`` answers or ``--seconds`` have passed
(bounded in count and time). Client and server share this machine's cores, so the figures are a
lower bound for a server with the machine to itself. Writes runs/serve/load.json and the
'serve-load' section of docs/results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import ROOT, write_section  # noqa: E402

from recfm.serve.batching import MAX_WAIT_MS  # noqa: E402

TINY_RUNS = {  # run directory -> `recfm train` arguments
    ROOT / "runs" / "serve" / "sasrec-ml100k": ["sasrec", "-d", "movielens-100k", "epochs=5", "max_len=50",
                                                "hidden_size=32", "num_layers=1", "show_progress=false"],
    ROOT / "runs" / "serve" / "textid-ml100k": ["textid", "-d", "movielens-100k", "--config",
                                                str(ROOT / "configs" / "textid-movielens-100k-demo.yaml")],
    ROOT / "runs" / "serve" / "textid-seq-ml100k": ["textid", "-d", "movielens-100k", "--config",
                                                    str(ROOT / "configs" / "textid-movielens-100k-sequence.yaml"),
                                                    "max_train_minutes=3"],
}
TARGET = "p99 < 200 ms and >= 50 requests/s at 20 clients (issue 6, tiny CPU preset)"
TARGET_CLIENTS, TARGET_P99_MS, TARGET_RPS = 20, 200, 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def histories(run: Path, n: int = 500, max_len: int = 20) -> list[list[str]]:
    """Real histories of the run's dataset users (their last items before validation/test); for a
    multitask run, of MovieLens-1M's users (the catalog its tasks are built from)."""
    from recfm.config import RunConfig, read_yaml
    from recfm.data.registry import load_dataset
    from recfm.multitask.trainer import is_multitask_run

    if is_multitask_run(run):
        data = load_dataset("movielens-1m")
    else:
        cfg = RunConfig.model_validate(read_yaml(run / "config.yaml"))
        data = load_dataset(cfg.dataset, cfg.prep)
    rng = np.random.default_rng(0)
    users = rng.choice(data.n_users, size=min(n, data.n_users), replace=False)
    out = []
    for u in users:
        seq = data.sequence(int(u))[:-2][-max_len:]
        if len(seq):
            out.append([data.item_ids[i - 1] for i in seq])
    return out


class Connection:
    """One keep-alive HTTP/1.1 connection with just enough protocol for POST + JSON answers: much
    less client CPU than a general-purpose client, which matters when client and server share 2 cores."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: dict) -> int:
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def answer_bodies(run: Path, n: int = 200) -> list[dict]:
    """/answer requests from a multitask run's test records with options (their own task, input,
    instruction and options)."""
    from recfm.multitask.records import GenRecord
    from recfm.multitask.run import build_records, load_run_config

    records = build_records(load_run_config(run / "config.yaml").data, run.parent)
    gen = [r for splits in records.values() for r in splits["test"] if isinstance(r, GenRecord) and r.options]
    return [{"task": r.task, "input": r.input, "instruction": r.instruction, "options": r.options} for r in gen[:n]]


async def level(port: int, bodies: list[dict], clients: int, max_requests: int, max_seconds: float,
                path: str = "/recommend") -> dict:
    latencies: list[float] = []  # answered requests (200) only
    errors = 0
    counter = iter(range(max_requests))
    conns = [Connection("127.0.0.1", port) for _ in range(clients)]
    for conn in conns:  # connections are opened before the clock starts: clients are long-lived
        await conn.connect()

    async def client(conn: Connection) -> None:
        nonlocal errors
        try:
            for i in counter:
                if time.perf_counter() > stop_at:
                    return
                t0 = time.perf_counter()
                status = await conn.post(path, bodies[i % len(bodies)])
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
        finally:
            conn.close()

    stop_at = time.perf_counter() + max_seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    wall = time.perf_counter() - t0
    ms = np.array(latencies or [np.nan]) * 1000
    return {"endpoint": path, "clients": clients, "requests": len(ms), "errors": errors, "seconds": round(wall, 2),
            "rps": round(len(latencies) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def load_test(run: Path, levels: list[int], max_requests: int, max_seconds: float, threads: int | None,
              max_wait_ms: float | None) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "recfm.cli", "--quiet", "serve", "--run", str(run), "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    if max_wait_ms is not None:
        cmd += ["--max-wait-ms", str(max_wait_ms)]
    server = subprocess.Popen(cmd, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 1200  # a multitask run embeds its catalog on its first start
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=2).json()
                break
            except httpx.TransportError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server for {run} did not start")
                time.sleep(0.5)
        bodies = {"/recommend": [{"history": h, "k": 10, "exclude_history": True} for h in histories(run)]}
        if health.get("answers"):  # a multitask run: its history embeddings and generative answers too
            bodies["/embed"] = [{"history": b["history"]} for b in bodies["/recommend"]]
            bodies["/answer"] = answer_bodies(run)
        rows = []
        for path, requests in bodies.items():
            asyncio.run(level(port, requests, 4, 40, 30, path))  # warm-up
            for c in levels:
                row = asyncio.run(level(port, requests, c, max_requests, max_seconds, path))
                rows.append(row)
                print(f"{run.name}: {row}", flush=True)
        after = httpx.get(f"{base}/health").json()
        return {"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run), "model": health["model"],
                "dataset": health["dataset"], "n_items": health["n_items"], "levels": rows,
                "mean_batch": round(after["batched_requests"] / max(after["batches"], 1), 1)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def earlier_rows(runs: set[str]) -> list[str]:
    """Table rows of runs this invocation did not test, kept from docs/results.md (rows written
    before the endpoint and date columns existed get them: /recommend, date unknown)."""
    from baselines import RESULTS

    text = RESULTS.read_text() if RESULTS.exists() else ""
    begin, end = "<!-- BEGIN serve-load -->", "<!-- END serve-load -->"
    if begin not in text:
        return []
    kept = []
    for line in text.split(begin, 1)[1].split(end, 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("Target at") and not any(f" {r}:" in line for r in runs):
            kept.append(line)  # placed below the table by main()
        elif len(cells) >= 9 and cells[0].startswith("runs/") and cells[0] not in runs:
            if len(cells) == 9:
                cells = cells[:3] + ["/recommend"] + cells[3:] + ["before 2026-12-03"]
            kept.append("| " + " | ".join(cells) + " |")
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, nargs="+", default=list(TINY_RUNS))
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 20, 32])
    ap.add_argument("--requests", type=int, default=1000, help="answers per concurrency level at most")
    ap.add_argument("--seconds", type=float, default=30, help="seconds per concurrency level at most")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    ap.add_argument("--max-wait-ms", type=float, default=None, help="the server's --max-wait-ms (default: its own)")
    args = ap.parse_args()
    for run in [r.resolve() for r in args.run]:
        if run in TINY_RUNS and not (run / "metrics.json").is_file():
            subprocess.run([sys.executable, "-m", "recfm.cli", "--quiet", "train", *TINY_RUNS[run], "-o", str(run),
                            "--overwrite"], cwd=ROOT, check=True)
    results = [load_test(r.resolve(), args.levels, args.requests, args.seconds, args.threads, args.max_wait_ms)
               for r in args.run]
    out = ROOT / "runs" / "serve" / "load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))

    command = " ".join(["python benchmarks/serve_load.py", *sys.argv[1:]])
    wait = MAX_WAIT_MS if args.max_wait_ms is None else args.max_wait_ms
    lines = [f"Command: `{command}`  ",
             f"Run {dt.date.today().isoformat()}; {platform.machine()}, {os.cpu_count()} cores, CPU only; server "
             f"(`recfm serve`, micro-batching up to 32 requests, max wait {wait:g} ms) and the clients (one "
             f"asyncio process, one keep-alive connection each) on the same machine, loopback. Each level: at most {args.requests} requests or {args.seconds:.0f} s. Target: {TARGET}.",
             "", "| run | model | dataset (items) | endpoint | clients | requests | errors | req/s | p50 ms | p99 ms | run date |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    kept = earlier_rows({r["run"] for r in results})
    lines += [k for k in kept if k.startswith("|")]
    today = dt.date.today().isoformat()
    for r in results:
        for row in r["levels"]:
            lines.append(f"| {r['run']} | {r['model']} | {r['dataset']} ({r['n_items']}) | {row['endpoint']} | "
                         f"{row['clients']} | {row['requests']} | {row['errors']} | {row['rps']} | {row['p50_ms']} | "
                         f"{row['p99_ms']} | {today} |")
    lines.append("")
    lines += [k for k in kept if k.startswith("Target at")]
    lines.append("Mean requests per model call (micro-batching), runs of this invocation: "
                 + ", ".join(f"{r['model']} {r['mean_batch']}" for r in results) + ".")
    for r in results:
        at = next((row for row in r["levels"] if row["clients"] == TARGET_CLIENTS and row["endpoint"] == "/recommend"),
                  None)
        if at is not None:
            met = at["p99_ms"] < TARGET_P99_MS and at["rps"] >= TARGET_RPS and at["errors"] == 0
            lines.append(f"Target at {TARGET_CLIENTS} clients, {r['run']}: **{'met' if met else 'missed'}** "
                         f"(p99 {at['p99_ms']} ms, {at['rps']} requests/s, {at['errors']} errors).")
    write_section("serve-load", "\n".join(lines))


if __name__ == "__main__":
    main()
