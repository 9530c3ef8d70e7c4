"""IDML-ProxyAnchor on `glyphs`, same network, data and budget as configs/glyphs.py.

The semantic head and an unnormalised uncertainty head (64-d each) on the small ResNet's flattened
features, the introspective similarity (relative form, alpha = 1 - cos, beta = ||u_i + u_j||^2,
tau = 5) inside ProxyAnchor, and the official Mixup scheme (configs/digits_idml.py documents it).

    python -m probdml.main --config=configs/glyphs_idml.py --workdir=/tmp/glyphs_idml
    python -m probdml.main --config=configs/glyphs_idml.py:compat --workdir=...   (official-code ISM)
"""

import ml_collections

from configs import glyphs
from configs.digits_idml import idml_from


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return idml_from(glyphs.get_config(), variant)
