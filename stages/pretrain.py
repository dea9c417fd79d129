"""Stage 3: pretrain the network on synthetic captchas of the data's shape, for `train` to start from.

A few hundred labelled images of a site are too few to learn glyphs and reading order from scratch; the
`captcha` library draws as many as we like of the same size, lengths and charset. So when the training set
is the user's own images (`generate.count: 0`), this stage renders `pretrain.images` captchas in memory and
trains `pretrain.steps` steps on them, in an MLflow run of its own (tag stage=pretrain). It depends on the
shape, charset and params, not on the labelled images themselves (only on which side of a line their count
is, below): DVC makes it once per shape and charset and reuses it (its run cache restores it when you come
back to one) while labels are added and retrained.

Pretraining is kept where the learning curve shows it helps: with generated captchas in the training set
(`generate.count > 0`) pretraining on more of them adds nothing, and from `pretrain.below_images` (1,000)
labelled images on the network learns as well from scratch (README, "How many images do I need?"). The
stage then records why it skipped and `train` starts from scratch. verify_split writes which side of that
line the set is on (data/split/pretraining.json), so crossing it re-runs this stage, adding labels does not.
"""

from __future__ import annotations

import functools
import json
import shutil
import time

import numpy as np

from captcha_mlops.labels import Codec
from captcha_mlops.parallel import parallel_map
from captcha_mlops.params import DataParams, Params, load_params
from captcha_mlops.paths import PRETRAINED, PRETRAINING, SPLIT
from captcha_mlops.preprocess import CHANNELS, to_array
from captcha_mlops.synth import PRETRAIN_FONTS, factory_for

RECORD = PRETRAINED / "pretrained.json"
WEIGHTS = PRETRAINED / "model.weights.h5"


def synthesize(index: int, data: DataParams, charset: str, fonts: tuple[str, ...], seed: int) -> tuple[str, bytes]:
    """Captcha `index` as the model's input. Every other one is a negative: the `captcha` library draws dark
    on light, sites draw either way, and a network that has only seen one polarity transfers badly to the other.
    """
    factory = factory_for(charset, data.min_length, data.max_length, data.width, data.height, fonts)
    label, image = factory.sample(seed, index)
    pixels = to_array(image, data.width, data.height, data.color_mode)
    return label, (255 - pixels if index % 2 else pixels).tobytes()


def skip_reason(params: Params, pretraining: dict) -> str | None:
    """Why not to pretrain (None: pretrain). `pretraining`: verify_split's PRETRAINING record."""
    if params.generate.count > 0:
        return "generate.count > 0: the training set already holds generated captchas"
    if params.pretrain.images == 0:
        return "pretrain.images is 0"
    if not pretraining["wanted"]:
        return pretraining["why"]
    return None


def pretrain(params: Params, charset: str) -> dict:
    # Imported here, not above: most runs skip this stage, and TensorFlow and MLflow take 10 to 15 s to import.
    import mlflow

    from captcha_mlops.model import build_model
    from captcha_mlops.tracking import use_experiment
    from captcha_mlops.training import fit, seed_everything

    data = params.data
    count = params.pretrain.images
    task = functools.partial(
        synthesize,
        data=data,
        charset=charset,
        fonts=tuple(params.pretrain.fonts) or PRETRAIN_FONTS,
        seed=params.generate.seed,
    )
    samples = list(parallel_map(task, range(count), total=count, workers=params.generate.workers, desc="synthesize"))
    images = np.frombuffer(b"".join(pixels for _, pixels in samples), np.uint8).reshape(
        count, data.height, data.width, CHANNELS[data.color_mode]
    )
    codec = Codec(charset, data.max_length)
    targets = codec.encode_many(label for label, _ in samples)

    pretraining = params.pretrain
    train = params.train.model_copy(
        update={"steps": pretraining.steps, "batch_size": pretraining.batch_size, "max_minutes": 0.0}
    )
    seed_everything(train)
    model = build_model(
        params.model, data.height, data.width, data.max_length, codec.num_classes, CHANNELS[data.color_mode]
    )
    use_experiment(data.captcha_type)
    with mlflow.start_run(run_name=f"pretrain-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.set_tags({"stage": "pretrain", "arch": params.model.arch})
        mlflow.log_params({f"pretrain.{k}": v for k, v in params.pretrain.model_dump().items()})
        mlflow.log_params({k: v for k, v in params.as_flat_dict().items() if k.startswith(("data.", "model."))})
        summary = fit(model, images, targets, codec.num_classes, params.model.arch, train, PRETRAINED / "log.csv")
        model.save_weights(WEIGHTS)
        mlflow.log_artifacts(str(PRETRAINED), artifact_path="pretrained")
    return {"run_id": run.info.run_id, "images": count, "charset": charset, **summary}


def main() -> None:
    params = load_params()
    shutil.rmtree(PRETRAINED, ignore_errors=True)
    PRETRAINED.mkdir(parents=True)
    if reason := skip_reason(params, json.loads(PRETRAINING.read_text(encoding="utf-8"))):
        record = {"run_id": "", "skipped": reason}
    else:
        record = pretrain(params, (SPLIT / "charset.txt").read_text(encoding="utf-8"))
    RECORD.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"pretrain: {record}")


if __name__ == "__main__":
    main()
