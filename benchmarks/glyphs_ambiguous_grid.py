"""A PNG of the ambiguous glyphs' degradation: one row per character, one column per severity.

Each row is one character in one typeface with the default config's augmentation (seed 0) and the
occluder direction its `ambiguous` image draws; the columns apply severities 0, 0.25, 0.5, 0.75, 1
(probdml/data/glyphs.py documents the degradation). Shown 4x enlarged, grey separators.

    python benchmarks/glyphs_ambiguous_grid.py /tmp/glyphs_ambiguous.png
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHARACTERS = "Aég5R&жΩ"
SEVERITIES = (0.0, 0.25, 0.5, 0.75, 1.0)


def grid(characters: str = CHARACTERS, severities=SEVERITIES, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [rows * (size + 2), columns * (size + 2)]: character i in typeface 3 i mod 16."""
    from probdml.data import glyphs

    rows = []
    for i, ch in enumerate(characters):
        f = (3 * i) % len(glyphs.TYPEFACES)
        masters = glyphs.render([ord(ch)], glyphs.font_paths()[f], glyphs.MASTER_SCALE * size)
        angle = glyphs.draw_degradation(np.random.default_rng([seed, ord(ch), f, glyphs.DEGRADATION_STREAM]), 1)["angle"]
        cells = []
        for s in severities:
            degradation = {"severity": np.array([[s]]), "angle": angle[None]}
            rng = np.random.default_rng([seed, ord(ch), f])
            image = glyphs.augment(masters, 1, size, [rng], degradation=degradation)[0, 0]
            cells.append(np.pad(image, 1, constant_values=128))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def main() -> None:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="PNG path")
    parser.add_argument("--scale", type=int, default=4, help="enlargement (nearest neighbour)")
    args = parser.parse_args()
    image = grid()
    Image.fromarray(image).resize((image.shape[1] * args.scale, image.shape[0] * args.scale), Image.NEAREST).save(args.output)
    print(f"wrote {args.output}: rows {CHARACTERS!r}, severities {SEVERITIES}")


if __name__ == "__main__":
    main()
