"""IDML on CUB-200-2011 (classes 1-100 train, 101-200 test), the paper's retrieval protocol.

ResNet-50, batch 120, 60 epochs, AdamW lr 6e-4 halved every 5 epochs, 5 warm-up epochs
(docs/methods/idml.md#training-protocol; probdml.recipes documents the variants and the protocol).

    python -m probdml.main --config=configs/cub200_idml.py --workdir=W --config.model.pretrained=DIR
    --config=configs/cub200_idml.py:pa_compat   the official code's IDML-ProxyAnchor
    --config=configs/cub200_idml.py:ms          IDML with Multi-Similarity (any of probdml.recipes.VARIANTS)
"""

import ml_collections

from probdml.recipes import idml_retrieval_config

TRAIN_IMAGES = 5864  # images of classes 1-100


def get_config(variant: str = "pa") -> ml_collections.ConfigDict:
    return idml_retrieval_config(
        variant,
        dataset="cub200",
        train_images=TRAIN_IMAGES,
        learning_rate=6e-4,
        lr_step_epochs=5,
        lr_gamma=0.5,
        ks=(1, 2, 4, 8),
    )
