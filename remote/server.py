"""Render server on Ray Serve: clients send keypoints, the server renders their avatar and answers with the frame.

    python -m remote.server --host 127.0.0.1 --port 8765 [--checkpoint PATH] [--backend auto] [--token-file FILE]

starts a local Ray instance (dashboard off) and the Serve app, and prints a line with "ready" once it accepts
WebSocket connections at ws://HOST:PORT/. On an existing Ray cluster deploy the same app with
`serve run remote.server:app_builder checkpoint=/models/vox-cpk.pth.tar token_file=/secrets/token`
(or the same import path in a RayService's serveConfigV2); see docs/remote.md.

One deployment is both the WebSocket ingress and the renderer: a connection's avatar states live in its handler
(freed when it closes), and `@serve.batch` stacks the frames of all connections of a replica into one render.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from remote import protocol as P
from remote.service import (DEFAULT_BATCH_WAIT_MS, DEFAULT_MAX_BATCH, DEFAULT_MAX_CLIENTS,
                            DEFAULT_MAX_UNAUTHENTICATED, read_token)


def deployment(settings: dict):
    """The Serve application (a bound deployment) for these settings."""
    from remote.deployment import AvatarRenderer

    return AvatarRenderer.options(
        num_replicas=int(settings.get("replicas", 1)),
        # Serve's own cap sits above the service's two (clients, peers still to say hello): a silent peer beyond its
        # cap is closed at once instead of queueing in front of a real client; +4 for /healthz
        max_ongoing_requests=int(settings.get("max_clients", DEFAULT_MAX_CLIENTS))
        + int(settings.get("max_unauthenticated", DEFAULT_MAX_UNAUTHENTICATED)) + 4,
        ray_actor_options={"num_cpus": float(settings.get("replica_cpus", 1)),
                           "num_gpus": float(settings.get("num_gpus", 0))}).bind(settings)


def app_builder(args: dict):
    """`serve run remote.server:app_builder key=value ...`: checkpoint, backend, token_file (required),
    deterministic_weights, align_corners (default true), max_batch, batch_wait_ms, num_gpus, replicas,
    max_clients."""
    settings = dict(args)
    if not settings.get("token_file"):
        raise ValueError("a cluster deployment needs token_file=FILE (clients authenticate with its content)")
    read_token(settings["token_file"])  # fail at deploy time, not on the first connection
    for switch in ("deterministic_weights", "align_corners"):  # `key=value` arguments arrive as text
        if isinstance(settings.get(switch), str):
            settings[switch] = settings[switch].lower() in ("1", "true", "yes")
    if not settings.get("checkpoint") and not settings.get("deterministic_weights"):
        raise ValueError("a cluster deployment needs checkpoint=PATH (a path on the worker nodes)")
    return deployment(settings)


# --- command line -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from engines.cli import ArgumentParser, number, positive
    from engines.options import add_engine_arguments
    from engines.version import program_name, version_line
    p = ArgumentParser(prog=program_name("live-avatar-server", "python -m remote.server"),
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version_line("live-avatar-server"))
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs --token-file)")
    g.add_argument("--port", type=number(int, low=1, high=65535), default=P.DEFAULT_PORT,
                   help=f"port to listen on (default {P.DEFAULT_PORT})")
    g.add_argument("--token-file", metavar="FILE", help="shared secret the clients must present")
    g.add_argument("--num-cpus", type=positive(int), default=2, help="CPUs Ray may use (default 2)")
    g.add_argument("--num-gpus", type=number(float, low=0.0), default=None,
                   help="GPUs per replica (default: 1 if CUDA is available, else 0)")
    g.add_argument("--replicas", type=positive(int), default=1, help="renderer replicas (one per GPU)")
    g.add_argument("--max-batch", type=positive(int), default=DEFAULT_MAX_BATCH,
                   help="frames rendered together at most")
    g.add_argument("--batch-wait-ms", type=number(float, low=0.0, high=1000.0), default=DEFAULT_BATCH_WAIT_MS,
                   help=f"how long a frame waits for others to fill a batch (0..1000; default "
                        f"{DEFAULT_BATCH_WAIT_MS:g} ms)")
    g.add_argument("--max-clients", type=positive(int), default=DEFAULT_MAX_CLIENTS,
                   help="connections per replica")
    # the same engine flags as run_live.py; eager backends (cpu, torch) render a batch in one call, compiled ones
    # (tensorrt, cuda, openvino) frame by frame. The welcome states --align-corners: clients must match it.
    add_engine_arguments(p, title="model (as in run_live.py; the welcome tells clients --align-corners)",
                         checkpoint_default="the file run_live.py downloads into the cache")
    return p


def _settings(args) -> dict:
    """Checked settings (raises ValueError & co. with one-line messages); quick: nothing heavy is imported."""
    token = read_token(args.token_file) if args.token_file else ""
    if not P.is_loopback(args.host) and not token:
        raise ValueError(f"--host {args.host} is reachable from other machines: give --token-file FILE "
                         "(refusing to serve without authentication)")
    checkpoint = None
    if not args.deterministic_weights:
        from engines.weights import cached_path
        # default: the file run_live.py downloads and verifies into the cache (engines/checkpoint.py's table)
        checkpoint = Path(args.checkpoint) if args.checkpoint else cached_path()
        if not checkpoint.is_file():
            raise ValueError(f"checkpoint not found: {checkpoint} (give --checkpoint PATH)")
        checkpoint = str(checkpoint)
    return {"token": token, "checkpoint": checkpoint, "backend": args.backend, "device": args.device,
            "precision": None if args.precision == "auto" else args.precision, "align_corners": args.align_corners,
            "deterministic_weights": args.deterministic_weights, "max_batch": args.max_batch,
            "batch_wait_ms": args.batch_wait_ms, "num_gpus": args.num_gpus, "replicas": args.replicas,
            "max_clients": args.max_clients,
            # the replica's torch threads follow its CPUs (Ray sets OMP_NUM_THREADS); Serve's own actors take 0
            "replica_cpus": max(1, args.num_cpus // max(1, args.replicas))}


_SERVE_MISSING = 'the render server needs Ray Serve: pip install ".[serve]" (or pip install -r requirements-serve.txt)'
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def _serving_problem() -> str | None:
    """Why this machine cannot start the server, found before anything slow starts (one line), or None."""
    import importlib.util

    for module in ("ray", "fastapi"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"{_SERVE_MISSING} (no module named {module!r})"
    if os.environ.get(AUTH_MODE_ENV, "").strip().lower() == "disabled":
        # Ray's token is what guards its ports: the replica's gRPC server listens on every interface
        return (f"{AUTH_MODE_ENV}=disabled turns off Ray's token authentication: anyone who reaches the render "
                "replica's gRPC port (on every interface) or Ray's loopback ports could run code as this user; "
                f"unset {AUTH_MODE_ENV} (docs/remote.md)")
    return None


def _private_ray_token() -> None:
    """ray.init writes the cluster token to ~/.ray/auth_token with the default umask (often world-readable): that
    token is what protects the one Ray port that listens beyond loopback, so keep it to this user."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        if path.is_file() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError as exc:
        print(f"notice: could not make {path} private ({exc.strerror or exc})", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    if (sys.argv[1:] if argv is None else list(argv)) == ["--version"]:  # at once, before torch loads
        from engines.version import version_line
        print(version_line("live-avatar-server"))
        return 0
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except Exception as exc:  # noqa: BLE001 - UserError/ValueError/CheckpointError: one line, exit 2
        if not isinstance(exc, (ValueError, OSError)) and type(exc).__name__ not in ("WeightsError",
                                                                                     "CheckpointError"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = _serving_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    # said before the slow part: PyTorch and Ray take seconds to import, Ray and the replica ~20 s to start
    print(f"starting the render server on {args.host}:{args.port}: Ray, then the renderer (about 20-40 s) ...",
          file=sys.stderr, flush=True)
    if settings["num_gpus"] is None:
        import torch
        settings["num_gpus"] = 1.0 if torch.cuda.is_available() else 0.0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a render box
    # This Ray is a single local node: its node address is loopback, so GCS, raylet, workers, the dashboard
    # agent, the runtime-env agent and the metrics ports all listen on 127.0.0.1 (Ray's own switch for local-only
    # clusters); only the Serve proxy listens on --host. Ray's token authentication stays on.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
        from ray import serve

        import remote.deployment  # noqa: F401 - FastAPI, and Serve's decorators: a broken install fails here
    except ImportError as exc:  # installed, but broken (a missing dependency of Ray's or FastAPI's)
        print(f"error: {_SERVE_MISSING} ({exc})", file=sys.stderr)
        return 2

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    repo = str(Path(__file__).resolve().parents[1])  # the replicas import engines/ and remote/ from here
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, dashboard_host="127.0.0.1",
             _node_ip_address="127.0.0.1", log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": repo, "RAY_USAGE_STATS_ENABLED": "0"}})
    _private_ray_token()
    try:
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config={"enable_access_log": False})
        serve.run(deployment(settings), name="live-avatar", route_prefix="/", blocking=False)
        token = "required" if settings["token"] else "not required"
        print(f"ready in {time.perf_counter() - started:.0f} s: ws://{args.host}:{args.port}/ (token {token},"
              f" max batch {args.max_batch}, batch wait {args.batch_wait_ms:g} ms)", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        print("shutting down", file=sys.stderr, flush=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
