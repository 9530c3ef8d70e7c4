"""IDML-ProxyAnchor on the embedded digits (classes 0-4 train, 5-9 test), same budget as configs/digits.py.

The paper's model and metric on the small network: a semantic head and an unnormalised uncertainty
head on the SmallConvNet features, the introspective similarity (relative form, alpha = 1 - cos,
beta = ||u_i + u_j||^2, tau = 5; proxies certain) inside ProxyAnchor, and the official Mixup scheme
L(x, y) + lam L(x_mix, y) + (1 - lam) L(x_mix, y[pi]). No warm-up: the network trains from scratch
(the retrieval configs freeze the pretrained backbone and the uncertainty head for 5 epochs).

    python -m probdml.main --config=configs/digits_idml.py --workdir=/tmp/digits_idml
    python -m probdml.main --config=configs/digits_idml.py:compat --workdir=...   (official-code ISM)
"""

import ml_collections

from configs import digits
from probdml.models.embedding import PARAM_GROUPS
from probdml.similarity import ISM_COMPAT_PRESET


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    return idml_from(digits.get_config(), variant)


def idml_from(config: ml_collections.ConfigDict, variant: str = "") -> ml_collections.ConfigDict:
    """`config` (a ProxyAnchor config on a small network) turned into IDML-ProxyAnchor: the model becomes
    an `embedding_net` over the same backbone with an uncertainty head of the embedding's size, the
    similarity the ISM, Mixup on. Shared by the digits and glyphs IDML configs."""
    if variant not in ("", "paper", "compat"):
        raise ValueError(f"unknown IDML variant {variant!r}; valid: 'paper' (default), 'compat'")
    base = config.model
    config.model = ml_collections.ConfigDict()
    config.model.name = "embedding_net"
    config.model.backbone = base.name
    for key, value in base.items():
        if key != "name":
            config.model[key] = "avg+max" if key == "pooling" and value == "avgmax" else value
    config.model.normalize_embedding = True
    config.model.uncertainty_dim = base.embed_dim
    config.model.uncertainty_l2_normalize = False
    config.model.uncertainty_activation = "none"

    config.loss.similarity = "introspective"
    config.loss.similarity_options = ml_collections.ConfigDict(
        dict(alpha_mode="cos", beta_form="sumvec", ism_form="relative", tau=5.0, beta_offset=0.0,
             uncertainty_l2norm=False)
    )

    config.mixup = ml_collections.ConfigDict()
    config.mixup.enabled = True
    config.mixup.alpha = 1.0  # lam ~ Beta(1, 1), one per batch
    config.mixup.clean_weight = 1.0

    config.optim.model_groups = {k: PARAM_GROUPS[k] for k in ("backbone", "embedding", "uncertainty")}
    config.optim.frozen_until = {}  # e.g. {'backbone': 70, 'uncertainty': 70}: the official 5-epoch warm-up

    if variant == "compat":
        # The official code: u L2-normalised in the model and in the metric, beta + 4, raw proxies in
        # the exponent, tau = 5 (docs/methods/idml.md, D1-D3).
        config.model.uncertainty_l2_normalize = True
        config.loss.similarity_options.update(ISM_COMPAT_PRESET)
    return config
