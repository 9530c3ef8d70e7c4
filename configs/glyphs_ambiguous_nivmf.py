"""EL-nivMF on `glyphs/ambiguous`: configs/glyphs_nivmf.py on the degraded glyphs of
configs/glyphs_ambiguous.py (same network, data and budget as configs/glyphs_ambiguous.py).

    python -m probdml.main --config=configs/glyphs_ambiguous_nivmf.py --workdir=/tmp/glyphs_ambiguous_nivmf
"""

import ml_collections

from configs import glyphs_nivmf
from configs.glyphs_ambiguous import ambiguous


def get_config() -> ml_collections.ConfigDict:
    return ambiguous(glyphs_nivmf.get_config())
