"""IDML-ProxyAnchor on `glyphs/ambiguous`: configs/glyphs_idml.py on the degraded glyphs of
configs/glyphs_ambiguous.py (same network, data and budget as configs/glyphs_ambiguous.py).

    python -m probdml.main --config=configs/glyphs_ambiguous_idml.py --workdir=/tmp/glyphs_ambiguous_idml
    python -m probdml.main --config=configs/glyphs_ambiguous_idml.py:compat --workdir=...   (official-code ISM)
"""

import ml_collections

from configs import glyphs_idml
from configs.glyphs_ambiguous import ambiguous


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return ambiguous(glyphs_idml.get_config(variant))
