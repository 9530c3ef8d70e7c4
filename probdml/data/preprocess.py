"""Image preprocessing in TensorFlow (run inside tf.data on the CPU), torchvision semantics.

Training: RandomResizedCrop(size, scale, ratio) + RandomHorizontalFlip(0.5); evaluation:
Resize(resize_size) of the shorter side + CenterCrop(size); both followed by the normalization
(x / 255 - mean) / std per channel. Randomness is stateless: every draw is a function of the
example key `example_key(seed, step, position)`, so the same (seed, step, position) always gives
the same crop and flip, whatever the process, the thread or the point a run resumed from.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_ATTEMPTS = 10


@functools.cache
def tf_cpu():
    """The tensorflow module, with every GPU hidden from it so it never takes accelerator memory.

    Call before anything else initializes TensorFlow's devices; once they are initialized the
    visible devices can no longer change (tensorflow-cpu has no GPU to hide anyway).
    """
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # devices already initialized by the caller; nothing left to hide
    return tf


def example_key(seed, step, position):
    """Stateless-RNG key int64 [2] of one training example: fold_in(fold_in([seed, 0], step), position)."""
    tf = tf_cpu()
    key = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(step, tf.int64))
    return tf.random.experimental.stateless_fold_in(key, tf.cast(position, tf.int64))


def random_resized_crop_window(key, height, width, scale: Sequence[float], ratio: Sequence[float]):
    """(top, left, crop_height, crop_width) int32 of torchvision's RandomResizedCrop.get_params.

    Up to 10 attempts: area fraction s ~ U(scale), log aspect ratio r ~ U(log ratio),
    w = round(sqrt(s * H * W * e^r)), h = round(sqrt(s * H * W / e^r)) (round half to even); the
    first attempt with 0 < w <= W and 0 < h <= H wins, placed at top ~ U{0..H-h}, left ~ U{0..W-w}.
    If none fits: the central crop of the whole image with its aspect ratio clamped to `ratio`.
    """
    tf = tf_cpu()
    f64 = tf.float64
    h_in, w_in = tf.cast(height, f64), tf.cast(width, f64)
    k_area, k_ratio, k_top, k_left = tf.unstack(tf.random.experimental.stateless_split(key, 4))
    shape = [CROP_ATTEMPTS]
    area = h_in * w_in * tf.random.stateless_uniform(shape, k_area, scale[0], scale[1], dtype=f64)
    aspect = tf.exp(tf.random.stateless_uniform(shape, k_ratio, math.log(ratio[0]), math.log(ratio[1]), dtype=f64))
    w = tf.round(tf.sqrt(area * aspect))
    h = tf.round(tf.sqrt(area / aspect))
    fits = (w > 0) & (w <= w_in) & (h > 0) & (h <= h_in)
    top = tf.floor(tf.random.stateless_uniform(shape, k_top, dtype=f64) * (h_in - h + 1))
    left = tf.floor(tf.random.stateless_uniform(shape, k_left, dtype=f64) * (w_in - w + 1))
    first = tf.argmax(tf.cast(fits, tf.int32))

    in_ratio = w_in / h_in
    lo, hi = min(ratio), max(ratio)
    fb_w = tf.where(in_ratio > hi, tf.round(h_in * hi), w_in)
    fb_h = tf.where(in_ratio < lo, tf.round(w_in / lo), h_in)
    fallback = tf.stack([tf.floor((h_in - fb_h) / 2), tf.floor((w_in - fb_w) / 2), fb_h, fb_w])
    window = tf.where(
        tf.reduce_any(fits), tf.stack([top[first], left[first], h[first], w[first]]), fallback
    )
    return tf.cast(window, tf.int32)


def normalize(image, mean: Sequence[float] | float, std: Sequence[float] | float):
    """float32 (image / 255 - mean) / std per channel."""
    tf = tf_cpu()
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def train_image(
    encoded,
    key,
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    mean: Sequence[float] | float = IMAGENET_MEAN,
    std: Sequence[float] | float = IMAGENET_STD,
):
    """float32 [size, size, 3]: JPEG bytes -> random resized crop (decoding only the window) ->
    bilinear, antialiased resize to size x size -> horizontal flip with probability 1/2 -> normalize."""
    tf = tf_cpu()
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    shape = tf.image.extract_jpeg_shape(encoded)
    window = random_resized_crop_window(crop_key, shape[0], shape[1], scale, ratio)
    image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    if hflip:
        flip = tf.random.stateless_uniform([], flip_key) < 0.5
        image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    return normalize(image, mean, std)


def resize_shorter_size(height, width, size: int):
    """(new_height, new_width) int32 of torchvision's Resize(size): shorter side = size, longer
    side = int(size * longer / shorter) (truncated)."""
    tf = tf_cpu()
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    short, target = tf.minimum(h, w), tf.constant(size, tf.float64)
    new_h = tf.where(h <= w, target, tf.floor(target * h / short))
    new_w = tf.where(h <= w, tf.floor(target * w / short), target)
    return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def eval_image(
    encoded,
    size: int,
    resize_size: int,
    mean: Sequence[float] | float = IMAGENET_MEAN,
    std: Sequence[float] | float = IMAGENET_STD,
):
    """float32 [size, size, 3]: JPEG bytes -> bilinear, antialiased resize of the shorter side to
    resize_size -> center crop size x size (offsets round((H - size) / 2), round((W - size) / 2),
    half to even) -> normalize."""
    if resize_size < size:
        raise ValueError(f"resize_size {resize_size} must be >= image_size {size}")
    tf = tf_cpu()
    image = tf.io.decode_jpeg(encoded, channels=3)
    new_h, new_w = resize_shorter_size(tf.shape(image)[0], tf.shape(image)[1], resize_size)
    image = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear", antialias=True)
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float64) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float64) / 2), tf.int32)
    image = image[top : top + size, left : left + size]
    image = tf.ensure_shape(image, [size, size, 3])
    return normalize(image, mean, std)
