"""Clients of the captcha service (service.py), as the seed's recognize_local/recognize_online scripts.

    python -m captcha_mlops.client folder data/new --url http://localhost:3000 [--captcha-type alnum4]
    python -m captcha_mlops.client online --captcha-url http://localhost:3000/captcha/ \\
        --url http://localhost:3000 --out data/new --count 100

`folder` reads every image of a folder and, when file names carry labels (label_x.png, label.png), prints
the accuracy. `online` fetches captchas from a URL, reads them and saves each as <predicted>_<uuid>.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from captcha_mlops.labels import label_from_name

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"}


class CaptchaClient:
    def __init__(
        self, url: str, captcha_type: str | None = None, api_key: str | None = None, timeout: float = 30
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.captcha_type = captcha_type

    def recognize(self, image: bytes, filename: str = "captcha.png") -> dict[str, Any]:
        data = {"captcha_type": self.captcha_type} if self.captcha_type else {}
        response = self.http.post("/recognize", files={"image_file": (filename, image)}, data=data)
        if response.is_error:
            raise RuntimeError(f"{filename}: HTTP {response.status_code} {response.text}")
        return response.json()

    def close(self) -> None:
        self.http.close()


def recognize_folder(client: CaptchaClient, folder: Path) -> tuple[int, int]:
    """Print each image's reading; return (images, correctly read) where file names carry labels."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    correct = 0
    for path in paths:
        text = client.recognize(path.read_bytes(), path.name)["text"]
        truth = label_from_name(path)
        correct += text == truth
        print(f"{path.name}\t{text}\t{'ok' if text == truth else 'MISS ' + truth}")
    return len(paths), correct


def recognize_online(client: CaptchaClient, captcha_url: str, out: Path, count: int) -> list[Path]:
    """Fetch `count` captchas, read them, save each under the name of what was read."""
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    for _ in range(count):
        response = client.http.get(captcha_url)
        response.raise_for_status()
        text = client.recognize(response.content)["text"]
        label = "".join(char for char in text if char.isalnum())  # a file name, whatever the server says
        path = out / f"{label}_{uuid.uuid4().hex}.png"
        path.write_bytes(response.content)
        saved.append(path)
        print(f"{path.name}\t{text}")
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-key", default=os.environ.get("CAPTCHA_API_KEY"), help="default: $CAPTCHA_API_KEY")
    commands = parser.add_subparsers(dest="command", required=True)
    folder = commands.add_parser("folder", help="read every image of a local folder")
    folder.add_argument("dir", type=Path)
    online = commands.add_parser("online", help="fetch captchas from a URL, read and save them")
    online.add_argument("--captcha-url", required=True, help="e.g. http://localhost:3000/captcha/")
    online.add_argument("--out", type=Path, required=True)
    online.add_argument("--count", type=int, default=10)
    for command in (folder, online):
        command.add_argument("--url", default="http://localhost:3000", help="the captcha service")
        command.add_argument("--captcha-type", help="default: the service's default type")
    args = parser.parse_args(argv)

    client = CaptchaClient(args.url, args.captcha_type, args.api_key)
    try:
        if args.command == "folder":
            total, correct = recognize_folder(client, args.dir)
            if total:
                print(f"accuracy: {correct}/{total} = {correct / total:.4f}")
            else:
                print(f"no images in {args.dir}", file=sys.stderr)
                return 1
        else:
            recognize_online(client, args.captcha_url, args.out, args.count)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
