"""Serving benchmark: the seed's stress test, measured with an async aiohttp load generator, without Excel.

Starts `bentoml serve` on loopback, drives POST /recognize at each concurrency for a fixed number of
requests, then again with adaptive batching off (max batch size 1), and measures the raw model without HTTP,
on every core and with the service's TensorFlow thread count: its batch throughput is the ceiling the service
is compared with, its time for one image the latency floor.
Memory (RSS of the whole server process tree) is read after each tenth of a long run (10k requests).

Writes bench/results/serving.csv (one row per request: total, recognition and request-overhead ms),
bench/results/serving.json (summary) and bench/results/serving.png (box plot).

    python -m bench.serving                                   # needs a packaged model: dvc repro (package stage)
    python -m bench.serving --requests 500 --concurrency 1 8  # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import bentoml
import httpx
import numpy as np
import psutil

from captcha_mlops.paths import ROOT
from captcha_mlops.settings import ServiceSettings
from captcha_mlops.synth import CaptchaFactory
from captcha_mlops.tracking import registered_name
from captcha_mlops.tracking_server import free_port

RESULTS = ROOT / "bench" / "results"
BENTOML = Path(sys.executable).with_name("bentoml")
SERVE = ["serve", "service:Captcha", "--timeout-keep-alive", "75"]  # service.py says why the keep-alive


@contextlib.contextmanager
def serving(
    env: dict[str, str], log_path: Path, cwd: Path = ROOT, timeout: float = 240
) -> Iterator[tuple[str, psutil.Process]]:
    """`bentoml serve service:Captcha` in `cwd` on a free loopback port until the block ends; yields (url, process).

    `env` is added to this process's environment. The tests serve their tiny projects with it too.
    """
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(BENTOML), *SERVE, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its workers stop with it
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process, log_path, env.get("CAPTCHA_API_KEY", ""), timeout)
            yield url, psutil.Process(process.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):  # it may have exited already
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, api_key: str, timeout: float) -> None:
    """Poll until a real recognition succeeds (/readyz can answer before the models are loaded)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers={"X-API-Key": api_key}, timeout=30) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                image = client.get("/captcha/").content
                if client.post("/recognize", files={"image_file": ("c.png", image)}).status_code == 200:
                    return
            time.sleep(0.5)  # poll interval
    raise RuntimeError(f"service not ready after {timeout}s:\n{log_path.read_text()[-3000:]}")


def tree_rss_mb(process: psutil.Process) -> float:
    """Resident memory of the server and all its workers."""
    processes = [process, *process.children(recursive=True)]
    return sum(p.memory_info().rss for p in processes if p.is_running()) / 2**20


def cpu_meter(server: psutil.Process) -> Callable[[], dict[str, float]]:
    """Starts counting CPU time; the function returned gives the cores used since by this process (the load
    generator, on the same machine) and by the server's process tree."""
    client, server_tree = psutil.Process(), [server, *server.children(recursive=True)]
    for process in [client, *server_tree]:
        process.cpu_percent()  # the first call starts the interval

    def cores() -> dict[str, float]:
        server_percent = sum(p.cpu_percent() for p in server_tree if p.is_running())
        return {"load_generator": round(client.cpu_percent() / 100, 2), "server": round(server_percent / 100, 2)}

    return cores


def multipart_bodies(images: list[bytes]) -> tuple[str, list[bytes]]:
    """The seed's request shape (multipart field `image_file`), encoded once: the load generator shares the
    CPU with the server, so every cycle it spends per request is taken from what is measured (for the same
    reason it is aiohttp: httpx spent 2.1 ms of CPU per request at 32 clients, aiohttp ~0.2 ms)."""
    request = httpx.Request("POST", "http://x/", files={"image_file": ("c.png", images[0], "image/png")})
    content_type = request.headers["content-type"]
    boundary = content_type.split("boundary=")[1].encode()
    bodies = []
    for image in images:
        head = b'--%s\r\nContent-Disposition: form-data; name="image_file"; filename="c.png"\r\n' % boundary
        bodies.append(head + b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--%s--\r\n" % boundary)
    return content_type, bodies


async def drive(url: str, images: list[bytes], concurrency: int, requests: int, api_key: str = "") -> list[dict]:
    """`requests` POSTs from `concurrency` concurrent clients; one row per request."""
    rows: list[dict] = []
    counter = iter(range(requests))
    content_type, bodies = multipart_bodies(images)
    headers = {"X-API-Key": api_key, "Content-Type": content_type}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout, headers=headers) as session:

        async def worker() -> None:
            for index in counter:
                started = time.perf_counter()
                try:
                    async with session.post("/recognize", data=bodies[index % len(bodies)]) as response:
                        status = response.status
                        body = await response.json() if status == 200 else {}
                except (aiohttp.ClientError, TimeoutError) as error:
                    body, status = {}, type(error).__name__
                total_ms = (time.perf_counter() - started) * 1000
                recognition_ms = body.get("seconds", float("nan")) * 1000
                rows.append(
                    {
                        "concurrency": concurrency,
                        "status": status,
                        "total_ms": round(total_ms, 3),
                        "recognition_ms": round(recognition_ms, 3),
                        "overhead_ms": round(total_ms - recognition_ms, 3),
                        "batch_size": body.get("batch_size", 0),
                    }
                )

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    for row in rows:
        row["run_seconds"] = round(elapsed, 3)
    return rows


def with_cpu(summary: dict[str, Any], cores: dict[str, float]) -> dict[str, Any]:
    """A level's summary plus the CPU it took: cores busy, and the server's CPU milliseconds per request."""
    per_request = cores["server"] * 1000 / summary["throughput_per_s"] if summary["throughput_per_s"] else None
    return {**summary, "cpu_cores": cores, "server_cpu_ms_per_request": per_request and round(per_request, 2)}


def summarize(rows: list[dict]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == 200]
    totals = np.array([r["total_ms"] for r in ok]) if ok else np.array([np.nan])
    return {
        "requests": len(rows),
        "errors": len(rows) - len(ok),
        "error_kinds": dict(Counter(str(r["status"]) for r in rows if r["status"] != 200)),
        "throughput_per_s": round(len(ok) / rows[0]["run_seconds"], 1) if rows else 0.0,
        "p50_ms": round(float(np.percentile(totals, 50)), 2),
        "p99_ms": round(float(np.percentile(totals, 99)), 2),
        "recognition_p50_ms": round(float(np.nanmedian([r["recognition_ms"] for r in ok] or [np.nan])), 2),
        "mean_batch_size": round(float(np.mean([r["batch_size"] for r in ok] or [0])), 1),
    }


def raw_model(captcha_type: str, batch_size: int, seconds: float, threads: int | None) -> dict[str, float]:
    """The model alone, without HTTP: images per second on full batches (the serving ceiling), the p50 ms of
    reading one image (the floor of a single request's latency) and the CPU cores it kept busy.

    `threads`: TensorFlow's thread count, None for its default (every core). TensorFlow takes it only before
    it first runs, so each measurement runs in a fresh process.
    """
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_time_raw_model, captcha_type, batch_size, seconds, threads).result()


def _time_raw_model(captcha_type: str, batch_size: int, seconds: float, threads: int | None) -> dict[str, float]:
    import tensorflow as tf

    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    from captcha_mlops.recognizer import Recognizer

    recognizer = Recognizer.load(bentoml.models.get(f"{registered_name(captcha_type)}:latest").path)
    meta = recognizer.meta
    shape = (batch_size, meta.height, meta.width, meta.channels)
    batch = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    recognizer.read_arrays(batch)  # trace once
    this_process = psutil.Process()
    cpu_before, images, started = sum(this_process.cpu_times()[:2]), 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        recognizer.read_arrays(batch)
        images += batch_size
    elapsed = time.perf_counter() - started
    cores = (sum(this_process.cpu_times()[:2]) - cpu_before) / elapsed
    single = []
    for _ in range(300):
        started = time.perf_counter()
        recognizer.read_arrays(batch[:1])
        single.append((time.perf_counter() - started) * 1000)
    return {
        f"batch{batch_size}_per_s": round(images / elapsed, 1),
        "single_image_p50_ms": round(float(np.median(single)), 2),
        "cpu_cores": round(cores, 2),
    }


def sample_images(captcha_type: str, count: int) -> list[bytes]:
    meta = bentoml.models.get(f"{registered_name(captcha_type)}:latest").info.metadata
    factory = CaptchaFactory(meta["charset"], meta["min_length"], meta["max_length"], meta["width"], meta["height"])
    images = []
    for index in range(count):
        buffer = io.BytesIO()
        factory.sample(seed=2024, index=index)[1].save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def box_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["batching"], r["concurrency"]) for r in rows}, key=lambda g: (g[0] != "on", g[1]))
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, field in zip(axes, ("total_ms", "overhead_ms"), strict=True):
        data = [
            [r[field] for r in rows if (r["batching"], r["concurrency"]) == g and r["status"] == 200] for g in groups
        ]
        axis.boxplot(data, showfliers=False)
        axis.set_xticks(range(1, len(groups) + 1), [f"c={c}\nbatch {b}" for b, c in groups])
        axis.set_ylabel("ms")
        axis.set_title({"total_ms": "Request latency", "overhead_ms": "Request overhead (total - recognition)"}[field])
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captcha-type", default="alnum4", help="must be packaged")
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--memory-requests", type=int, default=10000, help="long run for the RSS check")
    parser.add_argument("--raw-seconds", type=float, default=10.0, help="how long to time the raw model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = sample_images(args.captcha_type, 200)
    env = {"CAPTCHA_TYPES": args.captcha_type, "CAPTCHA_MAX_CONCURRENCY": "1024"}
    rows: list[dict] = []
    summary: dict[str, object] = {
        "command": "python -m bench.serving " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores, loopback",
    }

    with serving(env, args.out / "serve-batching-on.log") as (url, process):
        for concurrency in args.concurrency:
            asyncio.run(drive(url, images, concurrency, min(200, args.requests)))  # warm-up
            cores = cpu_meter(process)
            level = asyncio.run(drive(url, images, concurrency, args.requests))
            rows += [{**r, "batching": "on"} for r in level]
            summary[f"batching_on_c{concurrency}"] = with_cpu(summarize(level), cores())
            print(f"bench: batching on, c={concurrency}: {summary[f'batching_on_c{concurrency}']}", flush=True)
        memory_level = max(args.concurrency)
        # RSS after each tenth of the long run (after 1k, 2k, ... of 10k): growth per request would show as a
        # slope, a warming allocator as steps that level off.
        chunk, long_run, rss_after = args.memory_requests // 10, [], {}
        for done in range(chunk, chunk * 10 + 1, chunk):
            long_run += asyncio.run(drive(url, images, memory_level, chunk))
            rss_after[str(done)] = round(tree_rss_mb(process), 1)
        memory = summarize(long_run)
        summary["memory"] = {
            "concurrency": memory_level,
            "requests": len(long_run),
            "errors": memory["errors"],
            "error_kinds": memory["error_kinds"],
            "rss_mb_after_requests": rss_after,
            "growth_ratio": round(rss_after[str(chunk * 10)] / rss_after[str(chunk)], 3),
        }
        print(f"bench: memory: {summary['memory']}", flush=True)

    off_level = 32 if 32 in args.concurrency else max(args.concurrency)
    with serving(env | {"CAPTCHA_MAX_BATCH_SIZE": "1"}, args.out / "serve-batching-off.log") as (url, process):
        asyncio.run(drive(url, images, off_level, min(200, args.requests)))
        cores = cpu_meter(process)
        level = asyncio.run(drive(url, images, off_level, args.requests))
        rows += [{**r, "batching": "off"} for r in level]
        summary[f"batching_off_c{off_level}"] = with_cpu(summarize(level), cores())
        print(f"bench: batching off, c={off_level}: {summary[f'batching_off_c{off_level}']}", flush=True)

    # The ceiling the issue compares with: the model on every core. And the model as the service runs it.
    threads = ServiceSettings().model_threads
    raw = raw_model(args.captcha_type, 64, args.raw_seconds, threads=None)
    raw_as_served = raw_model(args.captcha_type, 64, args.raw_seconds, threads=threads)
    on = summary[f"batching_on_c{off_level}"]["throughput_per_s"]  # type: ignore[index]
    off = summary[f"batching_off_c{off_level}"]["throughput_per_s"]  # type: ignore[index]
    summary["raw_model"] = {"all_cores": raw, "as_served": {"threads": threads, **raw_as_served}}
    summary["ratios"] = {
        f"service_c{off_level}_over_raw_model": round(on / raw["batch64_per_s"], 3),
        f"service_c{off_level}_over_raw_model_as_served": round(on / raw_as_served["batch64_per_s"], 3),
        "batching_on_over_off": round(on / max(off, 1e-9), 2),
    }
    print(f"bench: raw model {raw}, as served {raw_as_served}; ratios {summary['ratios']}", flush=True)

    with (args.out / "serving.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "serving.json").write_text(json.dumps(summary, indent=2) + "\n")
    box_plot(rows, args.out / "serving.png")
    print(f"bench: wrote serving.csv, serving.json, serving.png to {args.out}")


if __name__ == "__main__":
    main()
