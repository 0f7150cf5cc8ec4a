"""`doodle serve`: the prediction API and the drawing page over HTTP (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse

HELP = "serve the prediction API and the drawing page (FastAPI + uvicorn)"
DESCRIPTION = (
    "Serve a model over HTTP: POST /api/predict and /api/predict/batch, GET /api/classes, /api/model, "
    "/api/models, /healthz, OpenAPI docs at /docs, and the drawing page at /. The model is a .pt checkpoint "
    "or a .onnx file from `doodle export`; either runs on ONNX Runtime unless --backend torch. It is the "
    "default; every installed shipped model is offered too, by name (loaded on its first use)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default="animals10",
        help="model: a shipped model's name (animals10), a .pt checkpoint or a .onnx file from `doodle export`",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)"
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, each with its own copy of the model (2 serves more on a 2-core box; see benchmarks/bench_serve.py)",
    )
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                   help="inference engine (auto: ONNX Runtime when installed)")  # fmt: skip
    p.add_argument(
        "--max-body-bytes", type=int, default=2_000_000, help="largest request body accepted (413 above)"
    )
    p.add_argument("--max-strokes", type=int, default=500, help="most strokes in one drawing")
    p.add_argument(
        "--max-points", type=int, default=50_000, help="most points in one drawing, all strokes together"
    )
    p.add_argument(
        "--max-batch", type=int, default=256, help="most drawings in one /api/predict/batch request"
    )
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn log level")  # fmt: skip


def _check_port_free(host: str, port: int) -> None:
    """A taken port is a one-line error with what to do, not uvicorn's `[Errno 98]` after loading the model."""
    import errno
    import socket

    from doodle_rnn.cli import UserError

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: not an address of this machine ({exc.strerror})") from exc
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is already in use (another `doodle serve`?); stop that server, "
                    "or pick another port with --port N (--port 0 picks a free one)"
                ) from exc
            if exc.errno == errno.EACCES:
                raise UserError(f"port {port} needs administrator rights; use a port above 1023") from exc
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def run(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    import uvicorn

    from doodle_rnn.cli import UserError
    from doodle_rnn.model_files import read_model_file, resolve_model_file

    args.checkpoint = str(resolve_model_file(args.checkpoint))  # once; a missing model stops here
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, not {args.workers}")
    limits = {"max_body_bytes": args.max_body_bytes, "max_strokes": args.max_strokes,
              "max_points": args.max_points, "max_batch": args.max_batch}  # fmt: skip
    if min(limits.values()) < 1:
        raise UserError("the --max-* limits must be positive")
    _check_port_free(args.host, args.port)
    common = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": False}
    if args.workers == 1:
        from doodle_rnn.server.app import Limits, create_app
        from doodle_rnn.text import plural

        app = create_app(read_model_file(args.checkpoint), Limits(**limits), args.backend)
        info = app.state.classifier.info
        print(f"model: {Path(args.checkpoint).resolve()} ({plural(len(info['classes']), 'class', 'classes')}, "
              f"encoding {info['encoding']}, backend {info['backend']})", flush=True)  # fmt: skip
        others = app.state.models.names[1:]
        if others:
            print(f"also offered by name, loaded on first use: {', '.join(others)}", flush=True)
        uvicorn.run(app, **common)
        return 0
    print(f"model: {Path(args.checkpoint).resolve()} (loaded by each of {args.workers} workers)", flush=True)
    # Several processes: each worker builds the app from the environment (uvicorn imports by name).
    os.environ.update(DOODLE_CHECKPOINT=str(Path(args.checkpoint).resolve()), DOODLE_BACKEND=args.backend,
                      DOODLE_LIMITS=json.dumps(limits))  # fmt: skip
    uvicorn.run("doodle_rnn.server.app:app_from_env", factory=True, workers=args.workers, **common)
    return 0
