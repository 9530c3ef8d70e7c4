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

from probdml.recipes import idml_retrieval_config

TRAIN_IMAGES = 59551  # Ebay_train.txt


def get_config() -> ml_collections.ConfigDict:
    config = idml_retrieval_config(
        "pa_baseline",
        dataset="sop",
        train_images=TRAIN_IMAGES,
        learning_rate=6e-4,
        lr_step_epochs=20,
        lr_gamma=0.25,
        ks=(1, 10, 100, 1000),
        eval_every_epochs=5,
        batch_size=180,
        epochs=60,
        warm_epochs=1,
    )
    config.model.frozen_bn_stats = False
    config.eval.clustering = False
    return config
