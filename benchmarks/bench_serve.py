"""Load test of `doodle serve` on loopback: concurrent clients POST real raw drawings to /api/predict.

    python benchmarks/bench_serve.py [--checkpoint CKPT] [--clients 16] [--seconds 10] [--workers 1]
                                     [--backend auto]

Starts the real server (`python -m doodle_rnn serve`) in a subprocess on a free port, waits for /healthz,
then runs `--clients` threads for `--seconds` (after a short warm-up), each with its own keep-alive
connection (stdlib http.client: the lightest client, because the client shares the CPU with the server
on a small box), and prints one JSON object: requests/s, latency p50/p99/max, errors, settings. The
server is always stopped at the end. Without --checkpoint the model is the default size (2 x bi-GRU
192, 345 classes) with random weights.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
from machine_facts import machine_facts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"


def bodies(n: int) -> list[bytes]:
    """Real raw captures (x, y, t in screen pixels), as the page sends them."""
    out = []
    for f in sorted(glob.glob(str(SHARED / "raw" / "*.ndjson"))):
        with open(f, "rb") as fh:
            line = fh.readline()
        out.append(orjson.dumps({"strokes": orjson.loads(line)["drawing"], "top_k": 3}))
        if len(out) >= n:
            break
    return out


def default_checkpoint(path: Path) -> Path:
    import torch

    from doodle_rnn.categories import all_categories
    from doodle_rnn.checkpoint import make_checkpoint, save_checkpoint
    from doodle_rnn.data.encode import LengthRules
    from doodle_rnn.model import GRUClassifier, ModelConfig

    torch.manual_seed(0)
    model = GRUClassifier(ModelConfig(num_classes=345)).eval()
    save_checkpoint(make_checkpoint(model, list(all_categories()), "stroke3", LengthRules().to_dict()), path)
    return path


def start_server(ckpt: Path, workers: int, backend: str) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "doodle_rnn", "serve", "--checkpoint", str(ckpt), "--port", "0",
           "--workers", str(workers), "--backend", backend, "--log-level", "info"]  # fmt: skip
    if workers > 1:  # uvicorn's multi-process mode cannot bind port 0 and report it: pick one
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd[cmd.index("--port") + 1] = str(port)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    port = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line and proc.poll() is not None:
            raise SystemExit("server exited before it was ready")
        m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line, re.I)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        raise SystemExit("server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain its output
    for _ in range(600):  # with several workers each loads the model after the parent binds
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                c.close()
                break
        except OSError:
            time.sleep(0.1)
    return proc, port


def client(
    port: int, payloads: list[bytes], start: float, stop: float, warm: float, out: list, errs: list
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = hash(threading.current_thread().name) % len(payloads)
    headers = {"Content-Type": "application/json"}
    while True:
        now = time.perf_counter()
        if now >= stop:
            break
        body = payloads[i % len(payloads)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/predict", body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            ok = r.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        t1 = time.perf_counter()
        if t0 >= start + warm:
            (out if ok else errs).append(t1 - t0)
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="model (.pt or .onnx); default: random weights, default size")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (threads, keep-alive)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured duration (max 120)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    ap.add_argument("--backend", default="auto", choices=("auto", "onnx", "torch"), help="inference engine")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the shared sample at {SHARED}")
    seconds = min(args.seconds, 120.0)
    clients = max(1, min(args.clients, 256))
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as d:
        ckpt = Path(args.checkpoint) if args.checkpoint else default_checkpoint(Path(d) / "m.pt")
        run(args, ckpt, seconds, clients)


def run(args: argparse.Namespace, ckpt: Path, seconds: float, clients: int) -> None:
    payloads = bodies(200)
    proc, port = start_server(ckpt, args.workers, args.backend)
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/api/model")
        model = json.loads(c.getresponse().read())
        c.close()
        lat: list[float] = []
        errs: list[float] = []
        start = time.perf_counter()
        stop = start + args.warmup + seconds
        threads = [threading.Thread(target=client, args=(port, payloads, start, stop, args.warmup, lat, errs),
                                    name=f"c{i}") for i in range(clients)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    ms = np.asarray(lat) * 1e3 if lat else np.zeros(1)
    print(json.dumps({
        "clients": clients, "seconds": seconds, "workers": args.workers, "backend": model.get("backend"),
        "model": model.get("model_config"), "requests": len(lat), "errors": len(errs),
        "requests_per_s": round(len(lat) / seconds, 1),
        "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2),
                       "max": round(float(ms.max()), 2)},
        "payload": "real raw drawings (x, y, t) from the shared sample, top_k 3, with model_view in the answer",
        "machine": machine_facts(),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
