"""EL-nivMF on `glyphs`, same network, data and budget as configs/glyphs.py.

Images are vMF(e/|e|, |e|) of the raw 64-d embedding of the small ResNet (a vMF head: never
normalised); class proxies are nivMFs; the loss is ProxyNCA++ over the closed-form EL kernel with a
learnable temperature (configs/digits_nivmf.py documents the options). Retrieval uses the cosine.

    python -m probdml.main --config=configs/glyphs_nivmf.py --workdir=/tmp/glyphs_nivmf
    --config.loss.guidance_weight=1.0     adds the ProxyAnchor guidance term of the official runs
"""

import ml_collections

from configs import glyphs
from configs.digits_nivmf import nivmf_from


def get_config() -> ml_collections.ConfigDict:
    config = nivmf_from(glyphs.get_config())
    base = config.model
    config.model = ml_collections.ConfigDict()
    config.model.name = "embedding_net"
    config.model.backbone = base.name
    for key in ("embed_dim", "widths", "blocks_per_stage", "groups", "pooling", "dtype"):
        config.model[key] = base[key]
    config.model.head = "vmf"
    config.model.init_norm_multiplier = 1.0
    return config
