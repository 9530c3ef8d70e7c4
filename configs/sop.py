"""ProxyAnchor baseline on Stanford Online Products (Ebay_train / Ebay_test): the official recipe.

The official code's only SOP command (Kim et al., CVPR 2020; README, Inception-BN) on ImageNet-
pretrained ResNet-50: batch 180, AdamW lr 6e-4 (weight decay 1e-4, proxies at 100x lr), 1 warm-up
epoch training only the embedding layer and the proxies, BatchNorm statistics *not* frozen
(--bn-freeze 0), lr times 0.25 every 20 epochs, 60 epochs, random batches, gradient clipping at 10,
GAP + GMP, 512-d L2-normalised embedding, ProxyAnchor (margin 0.1, alpha 32), recall@{1, 10, 100,
1000} as the official code reports. Evaluated every 5 epochs (60,502 test images), without the
k-means clustering metrics (11,316 clusters; --config.eval.clustering=True adds them).

    python -m probdml.main --config=configs/sop.py --workdir=W --config.model.pretrained=DIR
"""

import ml_collections

from probdml.recipes import proxy_anchor_config


def get_config() -> ml_collections.ConfigDict:
    return proxy_anchor_config("sop")
