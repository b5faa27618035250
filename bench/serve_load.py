"""Load test for ``histream serve`` (one process) or ``histream serve --ray``: K concurrent clients, each starting
streams back to back over the JSON API and following them on their WebSocket for a fixed time.

Starts the server itself (so it can read its memory: the RSS of its whole process tree, Ray's workers included),
then reports streams per minute, time to first frame (p50/p95), per-chunk latency (gaps between chunk events,
p50/p95), failed or dropped streams, and server memory before and after. Writes JSON and a markdown summary.

    python bench/serve_load.py --clients 4 --seconds 60 --out bench/results/serve_load_cpu_one_process
    python bench/serve_load.py --clients 4 --seconds 60 --ray --replicas 2 --out bench/results/serve_load_cpu_ray2
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

from histream_engine.cli_parser import make_parser


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    tree, grew = {pid}, True
    while grew:
        new = {p for p, pp in parents.items() if pp in tree} - tree
        tree |= new
        grew = bool(new)
    total = 0
    for p in tree:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            pass
    return total


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def client(base: str, body: dict, until: float, out: list) -> None:
    while time.time() < until:
        t0 = time.perf_counter()
        rec = {"ok": False, "first_frame_s": None, "chunk_gaps_s": [], "error": None}
        try:
            r = httpx.post(base + "/api/streams", json=body, timeout=300)
            if r.status_code != 201:
                rec["error"] = f"{r.status_code}: {r.text}"
                out.append(rec)
                time.sleep(0.5)
                continue
            sid, last = r.json()["id"], None
            with connect(base.replace("http", "ws") + f"/api/streams/{sid}/ws", open_timeout=60) as ws:
                while True:
                    msg = ws.recv(timeout=600)
                    if isinstance(msg, bytes):
                        continue
                    event = json.loads(msg)
                    if event["type"] == "chunk":
                        now = time.perf_counter()
                        if last is None:
                            rec["first_frame_s"] = now - t0
                        else:
                            rec["chunk_gaps_s"].append(now - last)
                        last = now
                    elif event["type"] in ("done", "cancelled", "failed"):
                        rec["ok"] = event["type"] == "done"
                        rec["error"] = event.get("error")
                        break
        except Exception as exc:  # noqa: BLE001 - a dropped stream is a result here
            rec["error"] = f"dropped: {type(exc).__name__}: {exc}"
        out.append(rec)


def main(argv=None) -> int:
    ap = make_parser("python -m bench.serve_load", __doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4, help="clients streaming at once")
    ap.add_argument("--seconds", type=float, default=60, help="how long the clients keep starting streams")
    ap.add_argument("--frames", type=int, default=45, help="frames of each stream")
    ap.add_argument("--size", type=int, default=64, help="height and width of each stream")
    ap.add_argument("--schedule", default="histream", help="each stream's schedule")
    ap.add_argument("--ray", action="store_true", help="serve over Ray Serve replicas")
    ap.add_argument("--replicas", default="2", help="--ray: replicas")
    ap.add_argument("--cpus-per-replica", default="0.5", help="--ray: CPUs Ray reserves for each replica")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "histream_engine.cli", "serve", "--device", "cpu", "--port", str(port),
           "--max-queue", str(2 * args.clients)]
    if args.ray:
        cmd += ["--ray", "--replicas", args.replicas, "--cpus-per-replica", args.cpus_per_replica]
    server = subprocess.Popen(cmd, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t_start = time.time()
        while True:
            try:
                if httpx.get(base + "/api/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() - t_start > 180:
                raise SystemExit("the server did not come up")
            time.sleep(0.5)
        startup_s = time.time() - t_start
        rss_before = tree_rss(server.pid)
        body = {"frames": args.frames, "width": args.size, "height": args.size, "schedule": args.schedule}
        results: list = []
        until = time.time() + args.seconds
        t0 = time.time()
        threads = [threading.Thread(target=client, args=(base, body, until, results)) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t0
        rss_after = tree_rss(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)

    ok = [r for r in results if r["ok"]]
    ttff = [r["first_frame_s"] for r in ok]
    gaps = [g for r in ok for g in r["chunk_gaps_s"]]
    report = {
        "server": f"ray, {args.replicas} replicas x {args.cpus_per_replica} CPU" if args.ray else "one process",
        "command": " ".join(["python", "bench/serve_load.py", *sys.argv[1:]]),
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), tiny demo model",
        "clients": args.clients, "seconds": round(wall, 1), "request": body, "startup_s": round(startup_s, 1),
        "streams_done": len(ok), "streams_per_min": round(len(ok) / wall * 60, 2),
        "failed_or_dropped": len(results) - len(ok), "errors": sorted({r["error"] for r in results if r["error"]})[:5],
        "time_to_first_frame_s": {"p50": pct(ttff, 0.5), "p95": pct(ttff, 0.95)},
        "chunk_gap_s": {"p50": pct(gaps, 0.5), "p95": pct(gaps, 0.95), "mean": statistics.fmean(gaps) if gaps else None},
        "server_rss_mib": {"before": round(rss_before / 2**20), "after": round(rss_after / 2**20)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    md = (f"# serve load test: {report['server']}\n\n`{report['command']}`\n\nDevice: {report['device']}\n\n"
          f"| clients | s | streams done | streams/min | failed/dropped | TTFF p50 / p95 s | chunk gap p50 / p95 s | RSS before / after MiB |\n"
          f"| --- | --- | --- | --- | --- | --- | --- | --- |\n"
          f"| {args.clients} | {report['seconds']} | {len(ok)} | {report['streams_per_min']} | {report['failed_or_dropped']} | "
          f"{f(pct(ttff, .5))} / {f(pct(ttff, .95))} | {f(pct(gaps, .5))} / {f(pct(gaps, .95))} | "
          f"{report['server_rss_mib']['before']} / {report['server_rss_mib']['after']} |\n")
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0 if not report["failed_or_dropped"] else 1


if __name__ == "__main__":
    sys.exit(main())
