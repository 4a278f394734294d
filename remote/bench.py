"""Remote rendering vs the local engine, in one run over loopback.

    python -m remote.bench [--frames 20] [--seconds 15] [--clients 1,2,4] [--backend auto] [--format jpeg]

1. local: the same backend in this process, render of one frame (median / p99 ms);
2. remote, 1 client, 1 frame in flight, alternating with 1. frame by frame: round trip (median / p99), the server's
   own render time of those frames, and what remote adds (round trip - server render: batch wait, JPEG, network);
   and keypoint detection, which the client runs itself every frame: the client's detector (chosen like a local
   run's: OpenVINO on a CPU) against the local engine's, alternating;
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

from engines.cli import ArgumentParser

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


def local_engine(args):
    from engines.backends import create_engine

    engine, _ = create_engine(backend=args.backend, checkpoint=args.checkpoint,
                              deterministic_weights=not args.checkpoint, int8_check="off")
    return engine


def remote_client(url, token, args, max_in_flight):
    from engines.image import to_model_input
    from remote.client import RemoteEngine

    engine = RemoteEngine(url, token=token, fmt=args.format, max_in_flight=max_in_flight,
                          deterministic_weights=not args.checkpoint, checkpoint=args.checkpoint,
                          log=lambda message: None)
    state = engine.encode(to_model_input(avatar_image(engine.image_size), engine.image_size))
    return engine, state


def bench_latency(url, token, args, local) -> dict:
    """Local render and remote round trip, alternating frame by frame: load from other jobs hits both alike."""
    from engines.image import to_model_input, to_uint8_image

    engine, state = remote_client(url, token, args, max_in_flight=1)
    local_state = local.encode(to_model_input(avatar_image(local.image_size), local.image_size, local.device))
    rng = np.random.default_rng(1)
    engine.render(state, jittered(state.kp, rng))  # warm-up both
    to_uint8_image(local.render(local_state, jittered(state.kp, rng)).image)
    local_ms, remote_ms, server_ms, local_detect, client_detect = [], [], [], [], []
    generator = torch.Generator().manual_seed(2)
    for _ in range(args.frames):
        kp = jittered(state.kp, rng)
        start = time.perf_counter()
        to_uint8_image(local.render(local_state, kp).image)
        local_ms.append((time.perf_counter() - start) * 1000.0)
        start = time.perf_counter()
        engine.render(state, kp)
        remote_ms.append((time.perf_counter() - start) * 1000.0)
        server_ms.append(engine.server_render_ms)
        frame = torch.rand(1, 3, local.image_size, local.image_size, generator=generator)
        for detector, times in ((local.detect, local_detect), (engine.detect, client_detect)):
            start = time.perf_counter()
            detector(frame)
            times.append((time.perf_counter() - start) * 1000.0)
    detector_backend = engine.report().fact("detector_backend")
    engine.close()
    # what remote adds = round trip - the server's own render of that frame (same process, same moment): robust to
    # the load of other jobs, which hits the local process and the replica differently on a shared machine
    added = [r - s for r, s in zip(remote_ms, server_ms)]
    return {"local": (statistics.median(local_ms), percentile(local_ms, 99)),
            "server": (statistics.median(server_ms), percentile(server_ms, 99)),
            "remote": (statistics.median(remote_ms), percentile(remote_ms, 99)),
            "added": (statistics.median(added), percentile(added, 99)),
            "local_detect": (statistics.median(local_detect), percentile(local_detect, 99)),
            "client_detect": (statistics.median(client_detect), percentile(client_detect, 99)),
            "client_detector": detector_backend}


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

    threads = [threading.Thread(target=drive, args=(i,), daemon=True) for i in range(clients)]
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
    from engines.backends import BACKENDS
    p = ArgumentParser(prog="python -m remote.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20, help="frames for each latency measurement")
    p.add_argument("--seconds", type=float, default=15.0, help="duration of each throughput run")
    p.add_argument("--clients", default="1,2,4", help="concurrent clients of the throughput runs")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--checkpoint", help="real weights (default: deterministic ones, same cost)")
    p.add_argument("--format", default="jpeg", choices=("jpeg", "png", "png16"))
    p.add_argument("--batch-wait-ms", type=float, default=4.0)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--threads", type=int, help="local torch threads (default: as many as the server replica)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]

    local = local_engine(args)
    token = secrets.token_hex(16)
    with running_server(args, token) as (url, port):
        server_threads = health(port).get("torch_threads")
        if args.threads is None and server_threads:
            torch.set_num_threads(server_threads)  # compare like with like: the replica's torch threads
        print(f"torch threads: local {torch.get_num_threads()}, server replica {server_threads}", flush=True)
        lat = bench_latency(url, token, args, local)
        local_ms = lat["local"][0]
        print(f"local {local.name} render {lat['local'][0]:.1f} / {lat['local'][1]:.1f} ms (median / p99); server "
              f"render {lat['server'][0]:.1f} / {lat['server'][1]:.1f} ms; remote round trip {lat['remote'][0]:.1f} / "
              f"{lat['remote'][1]:.1f} ms; added by remote {lat['added'][0]:+.1f} / {lat['added'][1]:+.1f} ms",
              flush=True)
        print(f"detect: local {local.name} {lat['local_detect'][0]:.1f} / {lat['local_detect'][1]:.1f} ms; remote "
              f"client ({lat['client_detector']}) {lat['client_detect'][0]:.1f} / {lat['client_detect'][1]:.1f} ms "
              f"= {lat['client_detect'][0] / lat['local_detect'][0]:.2f}x local (median / p99)", flush=True)
        rows = []
        for count in clients:
            row = bench_throughput(url, port, token, args, count)
            rows.append(row)
            print(f"remote, {count} client(s), 2 in flight each: {row['fps']:.2f} fps in all "
                  f"({row['fps'] * local_ms / 1000.0:.2f}x local), batches {row['batches']}", flush=True)
    print(f"\n| {local.name}, {os.cpu_count()} CPUs | median / p99 | fps (all clients) | vs local | batches "
          "(size: count) |")
    print("|---|---|---|---|---|")
    print(f"| local render (this process) | {lat['local'][0]:.0f} / {lat['local'][1]:.0f} ms | "
          f"{1000.0 / local_ms:.2f} | 1.00x | - |")
    print(f"| remote round trip, 1 client, 1 in flight | {lat['remote'][0]:.0f} / {lat['remote'][1]:.0f} ms | "
          f"{1000.0 / lat['remote'][0]:.2f} | {lat['remote'][0] / local_ms:.2f}x time | - |")
    print(f"| server render (replica, same frames) | {lat['server'][0]:.0f} / {lat['server'][1]:.0f} ms | - | "
          f"{lat['server'][0] / local_ms:.2f}x time | - |")
    print(f"| added by remote (round trip - server render) | {lat['added'][0]:+.1f} / {lat['added'][1]:+.1f} ms | "
          "- | - | - |")
    print(f"| detect, local engine | {lat['local_detect'][0]:.0f} / {lat['local_detect'][1]:.0f} ms | - | 1.00x | - |")
    print(f"| detect, remote client ({lat['client_detector']}) | {lat['client_detect'][0]:.0f} / "
          f"{lat['client_detect'][1]:.0f} ms | - | {lat['client_detect'][0] / lat['local_detect'][0]:.2f}x time | - |")
    for row in rows:
        print(f"| remote, {row['clients']} client(s), 2 in flight each | - | {row['fps']:.2f} | "
              f"{row['fps'] * local_ms / 1000.0:.2f}x fps | {row['batches']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
