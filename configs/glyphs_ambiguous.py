"""ProxyAnchor on `glyphs/ambiguous`: configs/glyphs.py on glyphs whose images carry a degradation severity.

Every image of the `ambiguous` builder config is the default config's image degraded with a severity
s ~ U[0, 1] recorded per image (the fraction of the character's ink hidden, plus resolution loss,
blur and contrast loss growing with s; probdml/data/glyphs.py documents the model): ground-truth
ambiguity an uncertainty score should rank. Network, loss, optimizer and budget are those of
configs/glyphs.py; configs/glyphs_ambiguous_idml.py and configs/glyphs_ambiguous_nivmf.py are
configs/glyphs_idml.py and configs/glyphs_nivmf.py on the same data.

    python -m probdml.main --config=configs/glyphs_ambiguous.py --workdir=/tmp/glyphs_ambiguous_pa
"""

import ml_collections

from configs import glyphs


def ambiguous(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` (a glyphs config) on the `ambiguous` builder config."""
    config.data.builder_config = "ambiguous"
    return config


def get_config() -> ml_collections.ConfigDict:
    return ambiguous(glyphs.get_config())
