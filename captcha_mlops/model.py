"""The networks. All map a (height, width, channels) uint8 image to (max_length, num_classes) per-position
character probabilities, so evaluation and serving treat them alike; `training_model` gives the one
that training fits, which for `ctc` is the network before its decoding layer."""

from __future__ import annotations

import keras
from keras import layers, ops

from captcha_mlops.params import ModelParams

STEP_LOGITS = "step_logits"


def build_model(
    params: ModelParams, height: int, width: int, max_length: int, num_classes: int, channels: int = 1
) -> keras.Model:
    """The `params.arch` network for images of (height, width, channels): 1 channel for gray, 3 for colour."""
    inputs = keras.Input(shape=(height, width, channels), name="image", dtype="uint8")
    if params.arch == "seed":
        return seed_model(inputs, max_length, num_classes)
    if params.arch == "ctc":
        return ctc_model(params, inputs, max_length, num_classes)
    return compact_model(params, inputs, max_length, num_classes)


def training_model(model: keras.Model) -> keras.Model:
    """What `fit` trains: the model itself, or for `ctc` the same layers up to the per-step logits."""
    if model.name == "ctc":
        return keras.Model(model.input, model.get_layer(STEP_LOGITS).output, name="ctc_steps")
    return model


def conv_blocks(inputs: keras.KerasTensor, params: ModelParams, width_halvings: int | None = None) -> keras.KerasTensor:
    """The feature extractor of `compact` and `ctc`: one [conv 3x3, ReLU, 2x2 max-pool] block per entry of
    `params.filters`, each halving the image; with `width_halvings`, the blocks past that many halve the
    height only.

    The middle blocks (all but the first and the last) stack `params.convs_per_block` convs: two see a
    glyph's strokes at twice the reach before the image is halved again, which tells overlapping look-alikes
    apart (overlap6, pretrained, mean of three draws of 200 labels: 0.869 -> 0.894 test image accuracy;
    README "How many images do I need?") for 1.6x the time of a step. The first block has
    `params.first_block_convs` convs at full resolution, without batch norm: there it costs the most (half of
    the CPU training time for little gain with one conv; with a second conv, a main-job step took 1.42x the time
    of one conv with batch norm, 1.07x without, timed one-off). A second conv read overlap6 no better than the
    spread between trainings (`python -m bench.paired_training --set model.first_block_convs=2 --draws 0 1 2`:
    mean 0.9675 -> 0.971), so the default is one. Everywhere else batch norm follows every conv, with momentum
    0.9, not Keras' 0.99: with 0.99 the moving statistics lag the weights so far in a short run that validation
    accuracy stays at chance while training accuracy climbs.
    """
    filters = params.filters
    halvings = len(filters) if width_halvings is None else width_halvings
    height, width = inputs.shape[1], inputs.shape[2]
    if height < 2 ** len(filters) or width < 2**halvings:
        raise ValueError(
            f"{width}x{height} pixels: the {len(filters)} conv blocks of model.filters halve the height "
            f"{len(filters)} times and the width {halvings} times, which needs at least "
            f"{2**halvings}x{2 ** len(filters)}; set data.width and data.height to that or more "
            "(every image is resized to them)"
        )

    def pooling(block: int) -> layers.MaxPooling2D:
        return layers.MaxPooling2D((2, 2) if block <= halvings else (2, 1))

    def normalized_convs(x: keras.KerasTensor, channels: int, count: int) -> keras.KerasTensor:
        for _ in range(count):
            x = layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.ReLU()(x)
        return x

    x = layers.Rescaling(1.0 / 255)(inputs)
    for _ in range(params.first_block_convs):
        x = layers.Conv2D(filters[0], 3, padding="same", activation="relu")(x)
    x = pooling(1)(x)
    for block, channels in enumerate(filters[1:], start=2):
        is_last = block == len(filters)
        x = normalized_convs(x, channels, 1 if is_last else params.convs_per_block)
        x = pooling(block)(x)
    return x


def compact_model(params: ModelParams, inputs: keras.KerasTensor, max_length: int, num_classes: int) -> keras.Model:
    """Conv blocks, each halving the image, then one softmax per character position.

    Four blocks turn 60x100 into a 3x6 grid whose cells each see about a third of a character; the
    position heads read the whole flattened grid, so each finds "its" character wherever the captcha
    library placed it.
    """
    x = layers.Flatten()(conv_blocks(inputs, params))
    x = layers.Dropout(params.dropout)(x)
    x = layers.Dense(max_length * num_classes)(x)
    x = layers.Reshape((max_length, num_classes))(x)
    outputs = layers.Softmax(name="chars")(x)
    return keras.Model(inputs, outputs, name="compact")


def seed_model(inputs: keras.KerasTensor, max_length: int, num_classes: int) -> keras.Model:
    """The original cnn_captcha network: 3 x [conv3x3, ReLU, maxpool, dropout] -> FC 1024 -> sigmoid.

    Kept so `dvc exp run -S model.arch=seed` reproduces the baseline; trained with binary
    cross-entropy on one-hot targets and Adam 1e-4 as the original was (see train.compile_model).
    """
    x = layers.Rescaling(1.0 / 255)(inputs)
    for channels in (32, 64, 128):
        x = layers.Conv2D(channels, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(0.25)(x)  # the seed's keep_prob 0.75
    x = layers.Flatten()(x)
    x = layers.Dense(1024, activation="relu")(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Dense(max_length * num_classes, activation="sigmoid")(x)
    outputs = layers.Reshape((max_length, num_classes), name="chars")(x)
    return keras.Model(inputs, outputs, name="seed")


def ctc_model(params: ModelParams, inputs: keras.KerasTensor, max_length: int, num_classes: int) -> keras.Model:
    """The compact conv blocks read as a sequence of columns by a bidirectional GRU, trained with CTC.

    The blocks halve the width until a column is `column_pixels_for` wide, and the height only after
    that: with the default 8, a 100-wide image becomes 12 columns, about three per character. 4 gives twice
    as many, for glyphs squeezed under their neighbours and doubled letters, which need a blank column
    between them; on three draws of 1,000 overlap6 labels it read no better (`python -m bench.paired_training
    --set model.column_pixels=4 --draws 0 1 2`: 0.9675 -> 0.975, 0.9675, 0.9575), so it is not the default.
    The same GRU and classifier read every column, so a glyph learned at one place is known everywhere: that
    sharing is what makes CTC models learn captchas from less data than per-position heads. `rnn_layers` stacks
    more GRUs, each reading the one below it: context across neighbours for glyphs hidden under them. Each column
    scores the characters plus "blank" (the codec's PAD class, so the output keeps `num_classes`);
    `GreedyCtcDecode` turns the columns into the per-position output of the other networks, which is what
    is saved and served.
    """
    width_halvings = column_pixels_for(params, inputs.shape[2], max_length).bit_length() - 1
    x = conv_blocks(inputs, params, width_halvings)
    # (rows, columns, channels) -> one feature vector per column, left to right.
    x = layers.Permute((2, 1, 3))(x)
    x = layers.Reshape((x.shape[1], x.shape[2] * x.shape[3]))(x)
    x = layers.Dropout(params.dropout)(x)
    x = layers.Dense(params.rnn_units, activation="relu")(x)
    for _ in range(params.rnn_layers):
        x = layers.Bidirectional(layers.GRU(params.rnn_units, return_sequences=True))(x)
    x = layers.Dropout(params.dropout)(x)
    logits = layers.Dense(num_classes, name=STEP_LOGITS)(x)
    probabilities = layers.Softmax()(logits)
    outputs = GreedyCtcDecode(max_length, name="chars")(probabilities)
    return keras.Model(inputs, outputs, name="ctc")


def column_pixels_for(params: ModelParams, width: int, max_length: int) -> int:
    """The width of image each CTC column reads: `params.column_pixels`, halved while the image would give fewer
    than the 2 * max_length - 1 columns CTC needs (a blank column between two equal characters), so that
    narrow captchas of many characters (80 pixels, 6 characters: 10 columns of 8 pixels, 20 of 4) train as
    they are rather than fail."""
    if len(params.filters) < params.column_pixels.bit_length() - 1:
        raise ValueError(f"ctc: {len(params.filters)} conv blocks can't make {params.column_pixels}-pixel columns")
    pixels = params.column_pixels
    while pixels > 1 and width // pixels < 2 * max_length - 1:
        pixels //= 2
    if width // pixels < 2 * max_length - 1:
        raise ValueError(
            f"ctc: {width} pixels are too narrow for {max_length} characters, even a column a pixel: CTC needs "
            f"{2 * max_length - 1}; set data.width to that or more (every image is resized to it)"
        )
    return pixels


def greedy_ctc_decode(step_scores, max_length: int):
    """(batch, steps, num_classes) scores -> (batch, max_length, num_classes), blank = the last class.

    Best class per column; a character is read where it differs from the column before and is not
    blank (so "aa" needs a blank between). The i-th character read fills position i with its column's
    score; positions past the last character hold blank with score 1, as PAD in the other networks.
    Characters beyond `max_length` are dropped.
    """
    num_classes = ops.shape(step_scores)[-1]
    blank = num_classes - 1
    best = ops.argmax(step_scores, axis=-1)
    previous = ops.pad(best[:, :-1], [[0, 0], [1, 0]], constant_values=blank)
    read = ops.cast(ops.logical_and(best != blank, best != previous), step_scores.dtype)
    position = ops.cast(ops.cumsum(read, axis=1), "int32") - 1
    where = ops.one_hot(position, max_length, dtype=step_scores.dtype) * read[..., None]  # (b, steps, length)
    what = ops.one_hot(best, num_classes, dtype=step_scores.dtype) * ops.max(step_scores, axis=-1)[..., None]
    chars = ops.einsum("btl,btc->blc", where, what)
    unread = 1.0 - ops.sum(where, axis=1)  # (b, length): 1 past the last character read
    return chars + unread[..., None] * ops.one_hot(blank, num_classes, dtype=step_scores.dtype)


def ctc_loss(y_true, y_pred):
    """CTC loss of per-step logits against the one-hot per-position targets all networks train on.

    The targets' PAD class is CTC's blank; a label's length is its number of non-PAD positions.
    """
    blank = ops.shape(y_true)[-1] - 1
    labels = ops.argmax(y_true, axis=-1)
    label_lengths = ops.sum(ops.cast(labels != blank, "int32"), axis=-1)
    batch, steps = ops.shape(y_pred)[0], ops.shape(y_pred)[1]
    return ops.ctc_loss(labels, y_pred, label_lengths, ops.full((batch,), steps, "int32"), mask_index=blank)


def on_decoded(metric):
    """A per-position metric (y_true, y_pred) applied to greedily decoded per-step logits."""

    def decoded_metric(y_true, y_pred):
        return metric(y_true, greedy_ctc_decode(y_pred, ops.shape(y_true)[1]))

    decoded_metric.__name__ = metric.__name__  # logged as char_accuracy, image_accuracy like the others
    return decoded_metric


@keras.saving.register_keras_serializable(package="captcha_mlops")
class GreedyCtcDecode(layers.Layer):
    """`greedy_ctc_decode` as the last layer of the saved `ctc` model."""

    def __init__(self, max_length: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_length = max_length

    def call(self, step_probabilities):
        return greedy_ctc_decode(step_probabilities, self.max_length)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.max_length, input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "max_length": self.max_length}
