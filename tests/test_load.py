"""Load: bench/serving.py's async client against a real `bentoml serve`; overload is refused with 503.

The CI version is short; `pytest -m slow` runs the full bounded load (64 clients, 10k requests, flat memory).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from bench.serving import drive, serving, summarize, tree_rss_mb
from tests.conftest import BIN, run
from tests.serving_fixtures import API_KEY, Packaged, Server


def own_home(packaged: Packaged, tmp_path: Path) -> dict[str, str]:
    """Env for a second `bentoml serve`: a BENTOML_HOME of its own over the same models. Each server wipes
    $BENTOML_HOME/prometheus_multiproc_dir when it starts, which would blank the session server's /metrics."""
    home = tmp_path / "bentoml"
    home.mkdir()
    (home / "models").symlink_to(packaged.bento_home / "models")
    return packaged.env(packaged.alnum4) | {"BENTOML_HOME": str(home)}


def captchas(server: Server, count: int) -> list[bytes]:
    with server.client() as client:
        return [client.get("/captcha/").content for _ in range(count)]


def test_64_clients_get_answers_and_the_rows_the_benchmark_needs(server: Server) -> None:
    rows = asyncio.run(drive(server.url, captchas(server, 8), concurrency=64, requests=256, api_key=API_KEY))
    assert len(rows) == 256 and {r["status"] for r in rows} == {200}
    for row in rows:
        assert row["total_ms"] >= row["recognition_ms"] > 0
        assert row["overhead_ms"] == pytest.approx(row["total_ms"] - row["recognition_ms"], abs=0.01)
    summary = summarize(rows)
    assert summary["errors"] == 0 and summary["throughput_per_s"] > 0
    assert summary["mean_batch_size"] > 1  # 64 clients at once are read in batches
    assert summary["p50_ms"] <= summary["p99_ms"]


@pytest.mark.slow
def test_bounded_load_has_no_errors_and_flat_memory(server: Server) -> None:
    images = captchas(server, 50)
    first = asyncio.run(drive(server.url, images, concurrency=64, requests=1000, api_key=API_KEY))
    rss_after_1k = tree_rss_mb(server.process)
    rest = asyncio.run(drive(server.url, images, concurrency=64, requests=9000, api_key=API_KEY))
    rss_after_10k = tree_rss_mb(server.process)
    assert summarize(first + rest)["errors"] == 0
    assert rss_after_10k <= 1.1 * rss_after_1k, (rss_after_1k, rss_after_10k)


def test_overload_is_refused_with_503_and_the_server_keeps_serving(server: Server, tmp_path: Path) -> None:
    """A server admitting 2 requests at a time, sent 40 at once: the rest get 503 at once, none waits or fails."""
    images = captchas(server, 4)
    packaged: Packaged = server.packaged
    env = own_home(packaged, tmp_path) | {"CAPTCHA_MAX_CONCURRENCY": "2", "CAPTCHA_QUEUE_DEADLINE_MS": "5000"}
    with serving(env, tmp_path / "serve.log", cwd=packaged.alnum4) as (url, _):

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                files = [{"image_file": ("c.png", images[i % 4])} for i in range(40)]
                return await asyncio.gather(*(client.post("/recognize", files=f) for f in files))

        statuses = [r.status_code for r in asyncio.run(flood())]
        assert set(statuses) == {200, 503}, statuses
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.post("/recognize", files={"image_file": ("c.png", images[0])}).status_code == 200


def test_serving_benchmark_writes_csv_json_and_plot(server: Server, tmp_path: Path) -> None:
    """The whole `python -m bench.serving` on a tiny budget: outputs exist and hold what the README quotes."""
    packaged: Packaged = server.packaged
    options = ["--requests", "40", "--concurrency", "1", "4", "--memory-requests", "100", "--raw-seconds", "1"]
    out = tmp_path / "results"
    command = [str(BIN / "python"), "-m", "bench.serving", *options, "--out", str(out)]
    run(command, packaged.alnum4, env=own_home(packaged, tmp_path))
    summary = json.loads((out / "serving.json").read_text())
    for key in ("batching_on_c1", "batching_on_c4", "batching_off_c4"):
        assert summary[key]["requests"] == 40 and summary[key]["errors"] == 0, key
        # 40 requests cost the load generator a few ms of CPU, which may round to 0 (test_bench checks cpu_meter).
        assert summary[key]["cpu_cores"]["server"] > 0 and summary[key]["cpu_cores"]["load_generator"] >= 0, key
        assert summary[key]["server_cpu_ms_per_request"] > 0, key
    for raw in summary["raw_model"].values():  # each timed in a process of its own
        assert raw["batch64_per_s"] > 0 and raw["single_image_p50_ms"] > 0 and raw["cpu_cores"] > 0
    assert summary["raw_model"]["as_served"]["threads"] == 1  # CAPTCHA_MODEL_THREADS' default
    assert summary["raw_model"]["as_served"]["cpu_cores"] < 1.5  # one TensorFlow thread, plus Python around it
    assert summary["memory"]["requests"] == 100 and summary["memory"]["error_kinds"] == {}
    assert list(summary["memory"]["rss_mb_after_requests"]) == [str(n) for n in range(10, 101, 10)]
    assert set(summary["ratios"]) == {
        "service_c4_over_raw_model",
        "service_c4_over_raw_model_as_served",
        "batching_on_over_off",
    }
    header, *lines = (out / "serving.csv").read_text().splitlines()
    assert header.split(",")[:4] == ["concurrency", "status", "total_ms", "recognition_ms"] and len(lines) == 120
    assert (out / "serving.png").read_bytes()[:4] == b"\x89PNG"
