"""The commit a benchmark ran, as every bench records it."""

from __future__ import annotations

import subprocess

from captcha_mlops.paths import ROOT


def commit(revision: str = "HEAD") -> str:
    """The commit `revision` names in this checkout, as the benches record it (12 hex digits)."""
    named = subprocess.run(["git", "rev-parse", revision], cwd=ROOT, capture_output=True, text=True, check=True)
    return named.stdout[:12]
