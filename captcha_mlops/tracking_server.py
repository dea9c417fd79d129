"""A team's MLflow tracking server for development: `mlflow server` on a PostgreSQL of its own.

    python -m captcha_mlops.tracking_server start [--dir .tracking]   # prints the MLFLOW_TRACKING_URI to export
    python -m captcha_mlops.tracking_server stop  [--dir .tracking]

Everything lives in one folder (default `.tracking/`, git-ignored): the PostgreSQL cluster (`postgres/`),
the artifacts the server stores for its clients (`artifacts/`, its `--artifacts-destination`), the logs and
`server.json` (ports and pids). Both listen on free loopback ports only; `stop` ends them by pid. Start again
on the same folder and the runs, models and aliases are all still there.

PostgreSQL comes from the system (Debian: `apt-get install postgresql`); its server refuses to run as root,
so as root it runs as the `postgres` user, which then owns `postgres/`. In production the same `mlflow server`
command runs against a managed PostgreSQL and `--artifacts-destination s3://bucket/path` (README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from captcha_mlops.paths import ROOT

DEFAULT_DIR = ROOT / ".tracking"
DATABASE = "mlflow"


class ServerError(RuntimeError):
    """The tracking server could not be started or stopped."""


def free_port() -> int:
    """A loopback port no one listens on now: for the servers the project's scripts, tests and benchmarks start."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin(program: str) -> str:
    """A PostgreSQL server program: on PATH, or where Debian installs it (/usr/lib/postgresql/<version>/bin)."""
    found = shutil.which(program) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"), default=None)
    if found is None:
        raise ServerError(f"PostgreSQL's {program} not found: install PostgreSQL (Debian: apt-get install postgresql)")
    return found


def as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL's server programs refuse to run as root: run them as `postgres` then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def run(command: list[str], log: Path) -> None:
    with log.open("a") as out:
        if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
            raise ServerError(f"{' '.join(command)} failed; see {log}")


def start_postgres(folder: Path, log: Path) -> int:
    data, port = folder / "postgres", free_port()
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        run(as_postgres_user([postgres_bin("initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust"]), log)
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data}"  # TCP on loopback; the socket in its folder
    server_log = data / "server.log"  # written by the server's user
    run(
        as_postgres_user(
            [postgres_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(server_log), "-w", "start"]
        ),
        log,
    )
    connect = ["-h", "127.0.0.1", "-p", str(port), "-U", "mlflow"]
    databases = subprocess.run(
        [postgres_bin("psql"), *connect, "-lqt", "postgres"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if DATABASE not in {line.split("|")[0].strip() for line in databases.splitlines()}:
        run([postgres_bin("createdb"), *connect, DATABASE], log)
    return port


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited ({process.returncode}); see {log}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    raise ServerError(f"mlflow server did not answer at {url} within {timeout:g} s; see {log}")


def start(folder: Path) -> dict:
    folder = folder.resolve()
    state_file = folder / "server.json"
    if state_file.exists():
        raise ServerError(f"{state_file} exists: already running? (stop first)")
    folder.mkdir(parents=True, exist_ok=True)
    pg_port = start_postgres(folder, folder / "postgres.log")
    port = free_port()
    backend = f"postgresql+psycopg2://mlflow@127.0.0.1:{pg_port}/{DATABASE}"
    command = [
        *(str(Path(sys.executable).with_name("mlflow")), "server"),
        *("--backend-store-uri", backend, "--artifacts-destination", str(folder / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "2"),
    ]
    with (folder / "mlflow.log").open("a") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    state = {"tracking_uri": url, "mlflow_pid": server.pid, "postgres_port": pg_port, "backend_store_uri": backend}
    state_file.write_text(json.dumps(state, indent=2) + "\n")
    try:
        wait_healthy(url, server, folder / "mlflow.log")
    except ServerError:
        stop(folder)
        raise
    return state


def stop(folder: Path) -> None:
    folder = folder.resolve()
    state_file = folder / "server.json"
    if not state_file.exists():
        raise ServerError(f"no {state_file}: nothing started there")
    state = json.loads(state_file.read_text())
    with contextlib.suppress(ProcessLookupError):  # the server and its workers: one process group
        os.killpg(state["mlflow_pid"], signal.SIGTERM)
    pg_ctl = as_postgres_user([postgres_bin("pg_ctl"), "-D", str(folder / "postgres"), "-m", "fast", "-w", "stop"])
    subprocess.run(pg_ctl, capture_output=True, check=False)
    state_file.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the database, artifacts and logs live")
    args = parser.parse_args()
    try:
        if args.action == "start":
            state = start(args.dir)
            print(f"tracking server on {state['tracking_uri']} (PostgreSQL on port {state['postgres_port']})")
            print(f"export MLFLOW_TRACKING_URI={state['tracking_uri']}")
        else:
            stop(args.dir)
            print("tracking server stopped")
    except ServerError as error:
        raise SystemExit(f"tracking_server: {error}") from None


if __name__ == "__main__":
    main()
