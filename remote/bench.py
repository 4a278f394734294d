"""Remote rendering vs the local engine, in one run over loopback.

    python -m remote.bench [--frames 20] [--seconds 15] [--clients 1,2,4] [--backend auto] [--format jpeg]

1. local: the same backend in this process, render of one frame (median / p99 ms);
2. remote, 1 client, 1 frame in flight: round trip per frame (median / p99) and what it adds to the local render;
3. remote throughput with 1/2/4 concurrent clients (2 frames in flight each), and the batch sizes the server ran.
The server is `python -m remote.server` started here on 127.0.0.1 (deterministic weights unless --checkpoint:
the same arithmetic as the real ones). Keypoints are the avatar's own, jittered: no camera, no detection cost.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@contextmanager
def running_server(args, token: str):
    """`python -m remote.server` on a free loopback port until the block ends (then its process group is killed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        token_file = Path(folder) / "token"
        token_file.write_text(token)
        command = [sys.executable, "-m", "remote.server", "--host", "127.0.0.1", "--port", str(port),
                   "--token-file", str(token_file), "--backend", args.backend, "--num-cpus", str(args.num_cpus),
                   "--batch-wait-ms", str(args.batch_wait_ms), "--max-batch", str(args.max_batch)]
        command += ["--checkpoint", args.checkpoint] if args.checkpoint else ["--deterministic-weights"]
        log = open(Path(folder) / "server.log", "w")
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                                   start_new_session=True, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
        try:
            for line in process.stdout:
                if "ready" in line:
                    break
            else:
                raise RuntimeError("the server did not start:\n" + (Path(folder) / "server.log").read_text()[-3000:])
            threading.Thread(target=process.stdout.read, daemon=True).start()
            yield f"ws://127.0.0.1:{port}", port
        finally:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            log.close()


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        return json.loads(response.read())


def jittered(kp, rng):
    from engines.keypoints import Keypoints

    return Keypoints(kp.value + torch.from_numpy(rng.normal(0, 0.02, kp.value.shape).astype(np.float32)),
                     kp.jacobian.clone())


def avatar_image(size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    face = ((x - 0.5) ** 2 + (y - 0.45) ** 2 < 0.09).astype(np.float32)
    rgb = np.stack([0.3 + 0.5 * face, 0.3 + 0.3 * face * y, 0.6 - 0.2 * face], axis=-1)
    return (rgb * 255).astype(np.uint8)


def bench_local(args) -> dict:
    from engines.backends import create_engine
    from engines.image import to_model_input, to_uint8_image

    engine, _ = create_engine(backend=args.backend, checkpoint=args.checkpoint,
                              deterministic_weights=not args.checkpoint)
    state = engine.encode(to_model_input(avatar_image(engine.image_size), engine.image_size, engine.device))
    rng = np.random.default_rng(0)
    to_uint8_image(engine.render(state, jittered(state.kp, rng)))  # warm-up
    times = []
    for _ in range(args.frames):
        kp = jittered(state.kp, rng)
        start = time.perf_counter()
        to_uint8_image(engine.render(state, kp))
        times.append((time.perf_counter() - start) * 1000.0)
    return {"engine": engine.name, "median": statistics.median(times), "p99": percentile(times, 99)}


def remote_client(url, token, args, max_in_flight):
    from engines.image import to_model_input
    from live.remote_engine import RemoteEngine

    engine = RemoteEngine(url, token=token, fmt=args.format, max_in_flight=max_in_flight,
                          deterministic_weights=not args.checkpoint, checkpoint=args.checkpoint,
                          log=lambda message: None)
    state = engine.encode(to_model_input(avatar_image(engine.image_size), engine.image_size))
    return engine, state


def bench_latency(url, token, args) -> dict:
    engine, state = remote_client(url, token, args, max_in_flight=1)
    rng = np.random.default_rng(1)
    engine.render(state, jittered(state.kp, rng))  # warm-up
    times = []
    for _ in range(args.frames):
        kp = jittered(state.kp, rng)
        start = time.perf_counter()
        engine.render(state, kp)
        times.append((time.perf_counter() - start) * 1000.0)
    engine.close()
    return {"median": statistics.median(times), "p99": percentile(times, 99)}


def bench_throughput(url, port, token, args, clients: int) -> dict:
    engines = [remote_client(url, token, args, max_in_flight=2) for _ in range(clients)]
    before = health(port)["batches"]
    counts = [0] * clients
    stop = threading.Event()

    def drive(i):
        engine, state = engines[i]
        rng = np.random.default_rng(10 + i)
        while not stop.is_set():
            engine.render(state, jittered(state.kp, rng))
            counts[i] = sum(engine.batch_sizes.values())

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    after = health(port)["batches"]
    batches = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    for engine, _ in engines:
        engine.close()
    return {"clients": clients, "fps": sum(counts) / elapsed, "batches": dict(sorted(batches.items()))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m remote.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20, help="frames for each latency measurement")
    p.add_argument("--seconds", type=float, default=15.0, help="duration of each throughput run")
    p.add_argument("--clients", default="1,2,4", help="concurrent clients of the throughput runs")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "cuda", "cpu", "torch"))
    p.add_argument("--checkpoint", help="real weights (default: deterministic ones, same cost)")
    p.add_argument("--format", default="jpeg", choices=("jpeg", "png", "png16"))
    p.add_argument("--batch-wait-ms", type=float, default=4.0)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]

    local = bench_local(args)
    print(f"local {local['engine']}: render {local['median']:.1f} / {local['p99']:.1f} ms (median / p99), "
          f"{1000.0 / local['median']:.1f} fps", flush=True)
    token = secrets.token_hex(16)
    with running_server(args, token) as (url, port):
        latency = bench_latency(url, token, args)
        added = latency["median"] - local["median"]
        print(f"remote, 1 client, 1 in flight: round trip {latency['median']:.1f} / {latency['p99']:.1f} ms "
              f"(median / p99), {added:+.1f} ms vs local ({latency['median'] / local['median']:.2f}x)", flush=True)
        rows = []
        for count in clients:
            row = bench_throughput(url, port, token, args, count)
            rows.append(row)
            print(f"remote, {count} client(s), 2 in flight each: {row['fps']:.2f} fps in all "
                  f"({row['fps'] * local['median'] / 1000.0:.2f}x local), batches {row['batches']}", flush=True)
    print("\n| measurement | median / p99 ms | fps (all clients) | vs local | batch sizes (count) |")
    print("|---|---|---|---|---|")
    print(f"| local {local['engine']} render | {local['median']:.1f} / {local['p99']:.1f} | "
          f"{1000.0 / local['median']:.2f} | 1.00x | - |")
    print(f"| remote round trip, 1 client, 1 in flight | {latency['median']:.1f} / {latency['p99']:.1f} | "
          f"{1000.0 / latency['median']:.2f} | {latency['median'] / local['median']:.2f}x time "
          f"({added:+.1f} ms) | - |")
    for row in rows:
        print(f"| remote, {row['clients']} client(s), 2 in flight | - | {row['fps']:.2f} | "
              f"{row['fps'] * local['median'] / 1000.0:.2f}x fps | {row['batches']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
