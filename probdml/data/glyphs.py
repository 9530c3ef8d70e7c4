"""TFDS builder `glyphs`: Unicode characters rendered with the 16 typefaces bundled with matplotlib.

A fine-grained, class-disjoint retrieval benchmark that needs no download. Every image is one
character drawn with Pillow from one of the typefaces in matplotlib's `mpl-data/fonts/ttf`
(DejaVu Sans, DejaVu Sans Mono, DejaVu Serif, STIX General; each regular, bold, italic/oblique
and bold italic), then randomly augmented, grayscale (white ink on black), `size` x `size`.

Classes. A candidate is a code point that the character map (cmap) of every one of the 16 fonts
contains, read with fontTools, excluding Unicode categories C* (control, format) and Z*
(separators). Candidates are walked in code-point order; a candidate is dropped when its clean
rendering is empty in some typeface, or when it is confusable with a character kept before it:
two characters are confusable when the root-mean-square difference of their clean
`REFERENCE_SIZE` x `REFERENCE_SIZE` renderings (intensities in [0, 1]) is below
`CONFUSABLE_RMS` in at least `CONFUSABLE_MIN_TYPEFACES` of the 16 typefaces. This drops
homoglyphs such as Greek Alpha and Cyrillic A (kept: Latin A), Cyrillic o, the non-breaking
hyphen and the single low-9 quotation mark, and keeps characters that coincide in only a few
typefaces (Cyrillic te and Latin m in DejaVu Serif Italic): genuinely ambiguous samples. The
class list depends on no builder option. Class ids are positions in the code-point-sorted list.

Rendering: each character is drawn by Pillow (FreeType, anti-aliased) on a canvas of
MASTER_SCALE * size pixels, the em size EM_FRACTION (0.66) of the canvas, the baseline at
BASELINE_FRACTION (0.74) of its height, the ink box centred horizontally; the clean rendering is
that canvas averaged over MASTER_SCALE x MASTER_SCALE blocks. Vertical position and size
therefore carry information (comma vs apostrophe, o vs O), as in text.

Augmentation, per (character, typeface, sample), drawn from rng([seed, code point, typeface]):
stroke thickness (grey erosion or dilation of the MASTER_SCALE-times supersampled rendering by a
3x3 or 5x5 square: -1/4, +1/4 or +1/2 output pixel per side), then an affine map (isotropic
scale log-uniform in [1/max_scale, max_scale], anisotropy, rotation, shear, translation in output
pixels) sampled bilinearly from the rendering box-downsampled to twice the output resolution and
low-passed against aliasing, then Gaussian blur, contrast and additive Gaussian noise, rounded
to uint8. All images of one typeface are augmented together (vectorised numpy/scipy).

Ground-truth ambiguity (builder configs `ambiguous`, `tiny_ambiguous`): every image also gets a
severity s, drawn with an occluder direction phi from rng([seed, code point, typeface,
DEGRADATION_STREAM]) (s ~ U[0, 1) rounded to float32, then phi ~ U[0, 2 pi), per sample), stored
as the float32 feature `severity`. The augmentation draws are those of the default config, and s
degrades the image inside the same pipeline (`Degradation`; lengths in output pixels at size 32):
  1. occlusion, on the affinely sampled image before blur: a line sweeping along (cos phi, sin phi)
     in (column, row) coordinates erases (sets to 0) every pixel whose preceding pixels in sweep
     order hold less than max_occlusion * s (1 * s) of the image's ink, so that fraction of the ink
     (up to one pixel's share) is hidden and the rest left intact, as a crop would;
  2. resolution loss: area-averaged onto round(size / (1 + (max_downsample - 1) s)) cells per side
     (max_downsample 2: 16 x 16 at s = 1), then linearly interpolated back to size x size;
  3. extra Gaussian blur: std hypot(augmentation blur, max_blur_sigma * s) (max_blur_sigma 0.5);
  4. contrast loss: the augmentation's ink contrast times 1 - max_contrast_loss * s (0.5);
then the augmentation's noise and rounding as in the default config. At s = 0 every step is the
identity and the image equals the default config's byte for byte; at s = 1 no ink is left (only
noise), and from s ~ 0.5 the class is often no longer recognisable.

Split: a permutation of the class ids by rng(SPLIT_SEED) (optionally truncated to
`max_classes`); its first ceil(n/2) classes are `train`, the rest `test`; with
`validation_fraction > 0` the first round(fraction * n_train) training classes form a
`validation` split and leave `train`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import unicodedata

import numpy as np
import tensorflow_datasets as tfds
from scipy import ndimage

TYPEFACES: tuple[tuple[str, str], ...] = (
    ("DejaVu Sans", "DejaVuSans.ttf"),
    ("DejaVu Sans Bold", "DejaVuSans-Bold.ttf"),
    ("DejaVu Sans Oblique", "DejaVuSans-Oblique.ttf"),
    ("DejaVu Sans Bold Oblique", "DejaVuSans-BoldOblique.ttf"),
    ("DejaVu Sans Mono", "DejaVuSansMono.ttf"),
    ("DejaVu Sans Mono Bold", "DejaVuSansMono-Bold.ttf"),
    ("DejaVu Sans Mono Oblique", "DejaVuSansMono-Oblique.ttf"),
    ("DejaVu Sans Mono Bold Oblique", "DejaVuSansMono-BoldOblique.ttf"),
    ("DejaVu Serif", "DejaVuSerif.ttf"),
    ("DejaVu Serif Bold", "DejaVuSerif-Bold.ttf"),
    ("DejaVu Serif Italic", "DejaVuSerif-Italic.ttf"),
    ("DejaVu Serif Bold Italic", "DejaVuSerif-BoldItalic.ttf"),
    ("STIX General", "STIXGeneral.ttf"),
    ("STIX General Bold", "STIXGeneralBol.ttf"),
    ("STIX General Italic", "STIXGeneralItalic.ttf"),
    ("STIX General Bold Italic", "STIXGeneralBolIta.ttf"),
)
MASTER_SCALE = 4
EM_FRACTION = 0.66
BASELINE_FRACTION = 0.74
REFERENCE_SIZE = 32
CONFUSABLE_RMS = 0.02
CONFUSABLE_MIN_TYPEFACES = 8
SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Ranges of the random augmentation (output-pixel units scale with size / 32)."""

    max_scale: float = 1.15  # isotropic scale log-uniform in [1/max_scale, max_scale]
    max_aspect: float = 1.1  # x/y stretch log-uniform in [1/max_aspect, max_aspect]
    max_rotation_deg: float = 10.0
    max_shear: float = 0.2  # x += shear * y
    max_translation: float = 2.5  # output pixels at size 32
    stroke_probs: tuple[float, ...] = (0.2, 0.35, 0.25, 0.2)  # erode 3x3, none, dilate 3x3, dilate 5x5
    max_blur_sigma: float = 0.6  # output pixels at size 32, uniform in [0, max]
    min_contrast: float = 0.6  # ink intensity uniform in [min_contrast, 1]
    max_noise_std: float = 0.08  # additive N(0, std^2), std uniform in [0, max]


def font_dir() -> str:
    """matplotlib's bundled TrueType directory (mpl-data/fonts/ttf)."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def font_paths() -> list[str]:
    return [os.path.join(font_dir(), filename) for _, filename in TYPEFACES]


def cmap_codepoints(path: str) -> frozenset[int]:
    """Code points in the font's best Unicode character map (fontTools)."""
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True) as font:
        return frozenset(font.getBestCmap())


def candidate_codepoints() -> list[int]:
    """Sorted code points every typeface maps, without categories C* (control/format) and Z* (space)."""
    common = frozenset.intersection(*(cmap_codepoints(p) for p in font_paths()))
    return sorted(c for c in common if unicodedata.category(chr(c))[0] not in "CZ")


def render(codepoints: list[int], path: str, canvas: int) -> np.ndarray:
    """Clean renderings uint8 [N, canvas, canvas] of `codepoints` in one font (layout: module doc)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(path, size=round(EM_FRACTION * canvas))
    baseline = round(BASELINE_FRACTION * canvas)
    out = np.zeros((len(codepoints), canvas, canvas), np.uint8)
    for i, cp in enumerate(codepoints):
        left, _, right, _ = font.getbbox(chr(cp), anchor="ls")
        image = Image.new("L", (canvas, canvas), 0)
        x = round(canvas / 2 - (left + right) / 2)
        ImageDraw.Draw(image).text((x, baseline), chr(cp), font=font, fill=255, anchor="ls")
        out[i] = np.asarray(image)
    return out


def downsample(masters: np.ndarray, factor: int = MASTER_SCALE) -> np.ndarray:
    """float32 in [0, 1]: mean over factor x factor blocks of the last two axes, / 255."""
    total = np.zeros((*masters.shape[:-2], masters.shape[-2] // factor, masters.shape[-1] // factor), np.float32)
    for i in range(factor):
        for j in range(factor):
            total += masters[..., i::factor, j::factor]
    return total * np.float32(1.0 / (255 * factor * factor))


def rms_distances(clean: np.ndarray) -> np.ndarray:
    """[F, N, N] root-mean-square pixel difference sqrt(mean((x_i - x_j)^2)) per typeface."""
    f, n = clean.shape[:2]
    x = clean.reshape(f, n, -1).astype(np.float64)
    sq = np.sum(x * x, axis=-1)
    d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * (x @ x.transpose(0, 2, 1))
    return np.sqrt(np.maximum(d2, 0.0) / x.shape[-1])


def select_classes(codepoints: list[int], clean: np.ndarray) -> tuple[list[int], dict[int, str]]:
    """Greedy class selection (rule: module doc). clean: float [F, N, H, W] in [0, 1].

    Returns (kept code points, {dropped code point: reason}).
    """
    empty = np.any(clean.max(axis=(-2, -1)) == 0.0, axis=0)
    near = np.sum(rms_distances(clean) < CONFUSABLE_RMS, axis=0) >= CONFUSABLE_MIN_TYPEFACES
    kept: list[int] = []
    dropped: dict[int, str] = {}
    for j, cp in enumerate(codepoints):
        if empty[j]:
            dropped[cp] = "empty rendering"
            continue
        twins = [i for i in kept if near[i, j]]
        if twins:
            dropped[cp] = f"confusable with U+{codepoints[twins[0]]:04X}"
            continue
        kept.append(j)
    return [codepoints[i] for i in kept], dropped


@functools.lru_cache(maxsize=1)
def reference_renderings() -> tuple[tuple[int, ...], np.ndarray]:
    """(candidate code points, their clean renderings float32 [F, N, REFERENCE_SIZE, REFERENCE_SIZE]
    in [0, 1], read-only), cached."""
    candidates = candidate_codepoints()
    canvas = MASTER_SCALE * REFERENCE_SIZE
    clean = np.stack([downsample(render(candidates, p, canvas)) for p in font_paths()])
    clean.setflags(write=False)
    return tuple(candidates), clean


@functools.lru_cache(maxsize=1)
def class_codepoints() -> tuple[int, ...]:
    """The class list: code points kept by `select_classes` at REFERENCE_SIZE (cached)."""
    candidates, clean = reference_renderings()
    return tuple(select_classes(list(candidates), clean)[0])


def split_classes(
    num_classes: int, max_classes: int = 0, validation_fraction: float = 0.0
) -> dict[str, np.ndarray]:
    """Class ids (sorted int64) of each split: rng(SPLIT_SEED) permutation, first ceil(n/2) train."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    order = np.random.default_rng(SPLIT_SEED).permutation(num_classes)
    if max_classes:
        if not 2 <= max_classes <= num_classes:
            raise ValueError(f"max_classes must be 0 (all) or in [2, {num_classes}], got {max_classes}")
        order = order[:max_classes]
    n_train = math.ceil(len(order) / 2)
    n_val = round(validation_fraction * n_train)
    splits = {"train": order[n_val:n_train], "test": order[n_train:]}
    if validation_fraction > 0:
        splits["validation"] = order[:n_val]
    return {name: np.sort(ids).astype(np.int64) for name, ids in splits.items()}


def _draw(rng: np.random.Generator, aug: Augmentation, num_samples: int, size: int) -> dict[str, np.ndarray]:
    """The random parameters of `num_samples` augmentations, in a fixed draw order."""
    n = num_samples
    return {
        "stroke": rng.choice(len(aug.stroke_probs), size=n, p=np.asarray(aug.stroke_probs)),
        "scale": np.exp(rng.uniform(-1.0, 1.0, n) * np.log(aug.max_scale)),
        "aspect": np.exp(rng.uniform(-1.0, 1.0, n) * np.log(aug.max_aspect)),
        "theta": np.deg2rad(rng.uniform(-aug.max_rotation_deg, aug.max_rotation_deg, n)),
        "shear": rng.uniform(-aug.max_shear, aug.max_shear, n),
        "shift": rng.uniform(-aug.max_translation, aug.max_translation, (n, 2)) * (size / 32.0),
        "blur": rng.uniform(0.0, aug.max_blur_sigma, n) * (size / 32.0),
        "contrast": rng.uniform(aug.min_contrast, 1.0, n),
        "noise": rng.uniform(0.0, aug.max_noise_std, n)[:, None, None] * rng.standard_normal((n, size, size)),
    }


def _sampling_grid(p: dict[str, np.ndarray], size: int, scale: int) -> np.ndarray:
    """[2, n, size, size] (row, col) coordinates in a `scale`-times supersampled image of each
    output pixel under the inverse of x -> rotate(shear(stretch(x - centre))) + centre + shift,
    in (x, y) = (col, row) coordinates."""
    n = len(p["scale"])
    forward = np.zeros((n, 2, 2))
    c, s = np.cos(p["theta"]), np.sin(p["theta"])
    sx, sy, h = p["scale"] * p["aspect"], p["scale"] / p["aspect"], p["shear"]
    # rot @ [[1, h], [0, 1]] @ diag(sx, sy)
    forward[:, 0, 0], forward[:, 0, 1] = c * sx, (c * h - s) * sy
    forward[:, 1, 0], forward[:, 1, 1] = s * sx, (s * h + c) * sy
    inverse = np.linalg.inv(forward)
    centre = (size - 1) / 2.0
    grid = np.arange(size, dtype=np.float64) - centre
    x = grid[None, None, :] - p["shift"][:, 0, None, None]
    y = grid[None, :, None] - p["shift"][:, 1, None, None]
    src_x = inverse[:, 0, 0, None, None] * x + inverse[:, 0, 1, None, None] * y
    src_y = inverse[:, 1, 0, None, None] * x + inverse[:, 1, 1, None, None] * y
    to_master = lambda v: scale * (v + centre) + (scale - 1) / 2.0  # output pixel centre -> master
    return np.stack([to_master(src_y), to_master(src_x)])


def _blur_matrices(sigmas: np.ndarray, size: int) -> np.ndarray:
    """[n, size, size] K with K x K^T = Gaussian blur of x (std sigma, zero padding)."""
    d = np.arange(size)[:, None] - np.arange(size)[None, :]
    s = np.maximum(sigmas, 1e-3)[:, None, None]
    k = np.exp(-0.5 * (d[None] / s) ** 2)
    full = np.arange(-(size - 1), size)
    norm = np.sum(np.exp(-0.5 * (full[None, :] / s[:, 0]) ** 2), axis=1)
    return k / norm[:, None, None]


@dataclasses.dataclass(frozen=True)
class Degradation:
    """How the severity s in [0, 1] degrades an image (module doc; pixel units scale with size / 32)."""

    max_occlusion: float = 1.0  # fraction max_occlusion * s of the ink erased by a sweeping edge
    max_downsample: float = 2.0  # resolution divided by 1 + (max_downsample - 1) * s
    max_blur_sigma: float = 0.5  # extra Gaussian blur std s * max (output pixels at size 32)
    max_contrast_loss: float = 0.5  # ink intensity times 1 - max_contrast_loss * s


DEGRADATION_STREAM = 1  # the degradation of (seed, code point, typeface) draws from rng([seed, cp, f, 1])


def draw_degradation(rng: np.random.Generator, num_samples: int) -> dict[str, np.ndarray]:
    """Severity s ~ U[0, 1) rounded to float32, then occluder direction ~ U[0, 2 pi), per sample."""
    severity = rng.uniform(0.0, 1.0, num_samples).astype(np.float32).astype(np.float64)
    return {"severity": severity, "angle": rng.uniform(0.0, 2.0 * np.pi, num_samples)}


def _occlude(x: np.ndarray, severity: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Erase (set to 0) the pixels of x [n, H, W] swept first by a line moving along direction
    (cos angle, sin angle) in (col, row) coordinates, until ink sum(x) * severity is erased: pixel k
    in sweep order is erased iff the ink of the pixels before it is < severity * total ink."""
    n, h, w = x.shape
    rows, cols = np.mgrid[0:h, 0:w]
    proj = np.cos(angle)[:, None] * cols.ravel()[None] + np.sin(angle)[:, None] * rows.ravel()[None]
    order = np.argsort(proj, axis=1, kind="stable")
    flat = x.reshape(n, -1)
    ink = np.take_along_axis(flat, order, axis=1)
    before = np.cumsum(ink, axis=1) - ink
    erase = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(erase, order, before < severity[:, None] * ink.sum(axis=1, keepdims=True), axis=1)
    return np.where(erase, 0.0, flat).reshape(n, h, w)


def _resolution_matrices(factors: np.ndarray, size: int) -> np.ndarray:
    """[n, size, size] R = U D with R x R^T = x area-averaged onto m = round(size / factor) cells per
    side (D: cell i averages [i size/m, (i + 1) size/m)) and linearly interpolated back to size
    pixels (U: output pixel j at cell coordinate (j + 1/2) m / size - 1/2, edge cells repeated).
    factor 1 gives the identity exactly."""
    n = len(factors)
    m = np.rint(size / factors).astype(np.int64)[:, None, None]
    i = np.arange(size)[None, :, None]  # cell (rows of D; only i < m are cells)
    k = np.arange(size)[None, None, :]  # pixel
    overlap = np.minimum((i + 1) * size / m, k + 1) - np.maximum(i * size / m, k)
    down = np.where(i < m, np.clip(overlap, 0.0, None) * (m / size), 0.0)
    u = (np.arange(size)[None, :] + 0.5) * m[:, :, 0] / size - 0.5  # [n, size]
    left = np.floor(u)
    w = u - left
    up = np.zeros((n, size, size))
    rows = np.broadcast_to(np.arange(size), (n, size))
    batch = np.broadcast_to(np.arange(n)[:, None], (n, size))
    last = m[:, :, 0] - 1
    np.add.at(up, (batch, rows, np.clip(left, 0, last).astype(np.int64)), 1.0 - w)
    np.add.at(up, (batch, rows, np.clip(left + 1, 0, last).astype(np.int64)), w)
    return up @ down


STROKES = ("erode 3x3", "none", "dilate 3x3", "dilate 5x5")


def _stroke_variants(masters: np.ndarray) -> np.ndarray:
    """[4, N, C, C] float32 in [0, 1]: the STROKES variants of uint8 masters [N, C, C] (grey
    morphology with square footprints at MASTER_SCALE), box-downsampled by 2 and low-passed
    (Gaussian, std 0.8 px of the half-resolution image) against aliasing."""
    variants = [
        ndimage.grey_erosion(masters, size=(1, 3, 3)),
        masters,
        ndimage.grey_dilation(masters, size=(1, 3, 3)),
        ndimage.grey_dilation(masters, size=(1, 5, 5)),
    ]
    half = np.stack([downsample(v, 2) for v in variants])
    return ndimage.gaussian_filter(half, sigma=(0, 0, 0.8, 0.8), mode="constant")


def augment(
    masters: np.ndarray,
    num_samples: int,
    size: int,
    rngs: list[np.random.Generator],
    aug: Augmentation = Augmentation(),
    degradation: dict[str, np.ndarray] | None = None,
    model: Degradation = Degradation(),
) -> np.ndarray:
    """uint8 [N, num_samples, size, size]: augmented images of uint8 renderings [N, C, C]
    (C = MASTER_SCALE * size), sample parameters of image i drawn from rngs[i] (module doc).

    y = round(255 * clip(contrast * K (sample(stroke(master), affine)) K^T + noise, 0, 1)),
    with bilinear sampling and K the per-sample Gaussian blur matrix. `degradation`
    ({'severity', 'angle'}: [N, num_samples] each, from `draw_degradation`) degrades each image by
    `model` with its severity s (module doc); s = 0 leaves it byte for byte unchanged.
    """
    n = len(masters)
    if masters.shape[1:] != (MASTER_SCALE * size, MASTER_SCALE * size) or len(rngs) != n:
        raise ValueError(
            f"need masters [N, {MASTER_SCALE * size}, {MASTER_SCALE * size}] and one rng per master, "
            f"got {masters.shape} and {len(rngs)} rngs"
        )
    params = [_draw(rng, aug, num_samples, size) for rng in rngs]
    p = {k: np.concatenate([q[k] for q in params]) for k in params[0]}
    variants = _stroke_variants(masters)
    half = variants.shape[-1]
    source = variants.reshape(-1, half, half)
    image = np.repeat(np.arange(n), num_samples)
    grid = _sampling_grid(p, size, MASTER_SCALE // 2)
    layer = np.broadcast_to((p["stroke"] * n + image)[:, None, None], grid.shape[1:])
    x = ndimage.map_coordinates(source, np.stack([layer, *grid]), order=1, mode="constant", cval=0.0)
    sigma, contrast, linear = p["blur"], p["contrast"], None
    if degradation is not None:
        s = np.asarray(degradation["severity"], np.float64).reshape(-1)
        if s.shape != (n * num_samples,) or np.any((s < 0) | (s > 1)):
            raise ValueError(f"need severities in [0, 1] of shape [{n}, {num_samples}], got {np.shape(degradation['severity'])}")
        x = _occlude(x, model.max_occlusion * s, np.asarray(degradation["angle"], np.float64).reshape(-1))
        sigma = np.hypot(sigma, s * model.max_blur_sigma * (size / 32.0))
        contrast = contrast * (1.0 - model.max_contrast_loss * s)
        linear = _resolution_matrices(1.0 + (model.max_downsample - 1.0) * s, size)
    blur = _blur_matrices(sigma, size)
    if linear is not None:
        blur = blur @ linear
    x = blur @ x @ blur.transpose(0, 2, 1)
    y = np.clip(contrast[:, None, None] * x + p["noise"], 0.0, 1.0)
    return np.rint(y * 255.0).astype(np.uint8).reshape(n, num_samples, size, size)


@dataclasses.dataclass
class GlyphsConfig(tfds.core.BuilderConfig):
    """size: output side in pixels; samples_per_typeface: augmented images per (class, typeface);
    max_classes: 0 = every class, else the first max_classes of the split permutation;
    validation_fraction: share of training classes moved to a `validation` split; seed: augmentation;
    ambiguous: degrade every image with a drawn severity, stored as the feature `severity` (module doc)."""

    size: int = 32
    samples_per_typeface: int = 4
    max_classes: int = 0
    validation_fraction: float = 0.0
    seed: int = 0
    ambiguous: bool = False


class Glyphs(tfds.core.GeneratorBasedBuilder):
    """Characters x the 16 matplotlib typefaces, augmented; class-disjoint train/test split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        GlyphsConfig(name="default", description="32x32, 4 samples per class and typeface, every class."),
        GlyphsConfig(
            name="validation",
            description="As default, with 20% of the training classes held out as a validation split.",
            validation_fraction=0.2,
        ),
        GlyphsConfig(
            name="tiny", description="For tests: 12 classes, 1 sample per class and typeface.",
            max_classes=12, samples_per_typeface=1,
        ),
        GlyphsConfig(
            name="ambiguous",
            description="As default, every image degraded with a severity s ~ U[0, 1] (feature `severity`).",
            ambiguous=True,
        ),
        GlyphsConfig(
            name="tiny_ambiguous", description="For tests: tiny with the degradation of `ambiguous`.",
            max_classes=12, samples_per_typeface=1, ambiguous=True,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        features = {
            "image": tfds.features.Image(shape=(cfg.size, cfg.size, 1)),
            "label": tfds.features.ClassLabel(names=[f"U+{cp:04X}" for cp in class_codepoints()]),
            "codepoint": np.int64,
            "typeface": tfds.features.ClassLabel(names=[name for name, _ in TYPEFACES]),
            "index": np.int64,
        }
        if cfg.ambiguous:
            features["severity"] = np.float32
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            homepage="https://matplotlib.org/stable/users/explain/text/fonts.html",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager
        cfg = self.builder_config
        splits = split_classes(len(class_codepoints()), cfg.max_classes, cfg.validation_fraction)
        return {name: self._generate_examples(ids) for name, ids in splits.items()}

    def _generate_examples(self, class_ids: np.ndarray):
        cfg = self.builder_config
        codepoints = class_codepoints()
        per_class = len(TYPEFACES) * cfg.samples_per_typeface
        chosen = [codepoints[int(i)] for i in class_ids]
        for f, path in enumerate(font_paths()):
            masters = render(chosen, path, MASTER_SCALE * cfg.size)
            rngs = [np.random.default_rng([cfg.seed, cp, f]) for cp in chosen]
            degradation = None
            if cfg.ambiguous:
                draws = [
                    draw_degradation(np.random.default_rng([cfg.seed, cp, f, DEGRADATION_STREAM]), cfg.samples_per_typeface)
                    for cp in chosen
                ]
                degradation = {k: np.stack([d[k] for d in draws]) for k in draws[0]}
            samples = augment(masters, cfg.samples_per_typeface, cfg.size, rngs, degradation=degradation)
            for c, (class_id, cp, images) in enumerate(zip(class_ids, chosen, samples)):
                for s, image in enumerate(images):
                    index = int(class_id) * per_class + f * cfg.samples_per_typeface + s
                    example = {
                        "image": image[..., None],
                        "label": int(class_id),
                        "codepoint": cp,
                        "typeface": f,
                        "index": index,
                    }
                    if degradation is not None:
                        example["severity"] = np.float32(degradation["severity"][c, s])
                    yield index, example
