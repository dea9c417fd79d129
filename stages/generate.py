"""Stage 1: synthesize `generate.count` captchas into data/origin/ as label_serial.ext."""

from __future__ import annotations

import functools
import shutil

from captcha_mlops.parallel import parallel_map
from captcha_mlops.params import DataParams, GenerateParams, load_params
from captcha_mlops.paths import ORIGIN
from captcha_mlops.synth import factory_for


def write_sample(index: int, data: DataParams, generate: GenerateParams) -> str:
    factory = factory_for(data.charset, data.min_length, data.max_length, data.width, data.height, (*generate.fonts,))
    label, image = factory.sample(generate.seed, index)
    path = ORIGIN / f"{label}_{index:06d}.{generate.format}"
    image.save(path)
    return path.name


def main() -> None:
    params = load_params()
    # The stage owns data/origin/ (a DVC out): start from an empty folder so a smaller count leaves no strays.
    shutil.rmtree(ORIGIN, ignore_errors=True)
    ORIGIN.mkdir(parents=True)
    task = functools.partial(write_sample, data=params.data, generate=params.generate)
    count = params.generate.count
    for _ in parallel_map(task, range(count), total=count, workers=params.generate.workers, desc="generate"):
        pass
    print(f"generate: wrote {count} captchas to {ORIGIN}")


if __name__ == "__main__":
    main()
