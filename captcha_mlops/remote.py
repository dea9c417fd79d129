"""`dvc push` / `dvc pull` to the project's DVC remote, after checking that there is one and that it answers.

DVC's own answer to a missing or unreachable remote is a list of "missing cache files" ending in "Everything
is up to date"; this says what is wrong and how to fix it (`make push`, `make pull`).

    python -m captcha_mlops.remote push
    python -m captcha_mlops.remote pull
"""

from __future__ import annotations

import argparse
import subprocess
import sys

HOW_TO_ADD = "add one: dvc remote add --default storage <url> (a folder, s3://, gs://, ...: see README.md)"


class RemoteError(RuntimeError):
    """No remote to push to or pull from."""


def dvc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dvc", *args], capture_output=True, text=True, check=False)


def default_remote() -> tuple[str, str]:
    """(name, url) of the default DVC remote, or RemoteError."""
    configured = dvc("config", "core.remote")
    name = configured.stdout.strip()
    if configured.returncode != 0 or not name:
        raise RemoteError(f"this project has no default DVC remote; {HOW_TO_ADD}")
    url = dvc("config", f"remote.{name}.url").stdout.strip()
    return name, url


def check_reachable(name: str, url: str) -> None:
    listing = dvc("ls-url", url)
    if listing.returncode != 0:
        reason = (listing.stderr.strip().splitlines() or ["no answer"])[0].removeprefix("ERROR: ")
        raise RemoteError(f"DVC remote {name!r} ({url}) cannot be read: {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["push", "pull"])
    action = parser.parse_args().action
    try:
        name, url = default_remote()
        if action == "pull":  # a push creates a folder remote; a pull needs it to exist
            check_reachable(name, url)
    except RemoteError as error:
        raise SystemExit(f"{action}: {error}") from None
    print(f"{action}: DVC remote {name!r} ({url})", flush=True)
    sys.exit(subprocess.run(["dvc", action], check=False).returncode)


if __name__ == "__main__":
    main()
