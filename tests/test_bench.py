"""Cheap checks of the by-hand benchmarks' pieces (bench.serving runs for real in tests/test_load.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
from PIL import Image

from bench.accuracy import accuracy_ratio
from bench.own_data import CHARSET, HEIGHT, LENGTH, WIDTH, make_images
from bench.serving import cpu_meter, with_cpu
from captcha_mlops.labels import label_from_name


def test_own_data_images_are_valid_user_images_and_reproducible(tmp_path: Path) -> None:
    make_images(tmp_path / "a", 6)
    make_images(tmp_path / "b", 6)
    files = sorted((tmp_path / "a").iterdir())
    assert len(files) == 6
    for file in files:
        label = label_from_name(file.name)
        assert len(label) == LENGTH and set(label) <= set(CHARSET), file.name
        with Image.open(file) as image:
            assert image.format == "JPEG" and image.size == (WIDTH, HEIGHT)
        assert file.read_bytes() == (tmp_path / "b" / file.name).read_bytes()  # same seed, same set


def test_accuracy_ratio_is_undefined_when_the_seed_reads_nothing() -> None:
    assert accuracy_ratio({"test_image_accuracy": 0.9}, {"test_image_accuracy": 0.3}) == 3.0
    assert accuracy_ratio({"test_image_accuracy": 0.9}, {"test_image_accuracy": 0.0}) is None


def test_server_cpu_per_request_is_cores_over_throughput() -> None:
    cores = {"server": 1.5, "load_generator": 0.1}
    assert with_cpu({"throughput_per_s": 500.0}, cores)["server_cpu_ms_per_request"] == 3.0
    assert with_cpu({"throughput_per_s": 0.0}, cores)["server_cpu_ms_per_request"] is None  # every request failed


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_cpu_meter_counts_this_process_and_the_server_tree_apart() -> None:
    spin = "import time\nend = time.perf_counter() + 1.5\nwhile time.perf_counter() < end: pass"
    server = subprocess.Popen([sys.executable, "-c", spin])
    try:
        cores = cpu_meter(psutil.Process(server.pid))
        busy(0.5)  # the load generator's share
        measured = cores()
    finally:
        server.wait()
    assert measured["load_generator"] > 0.2 and measured["server"] > 0.2, measured
