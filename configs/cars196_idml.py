"""IDML on Cars196 (classes 1-98 train, 99-196 test), the paper's retrieval protocol.

ResNet-50, batch 120, 60 epochs, AdamW lr 2.5e-4 halved every 10 epochs, 5 warm-up epochs
(docs/methods/idml.md#training-protocol; probdml.recipes documents the variants and the protocol).

    python -m probdml.main --config=configs/cars196_idml.py --workdir=W --config.model.pretrained=DIR
    --config=configs/cars196_idml.py:pa_compat   the official code's IDML-ProxyAnchor
"""

import ml_collections

from probdml.recipes import idml_retrieval_config

TRAIN_IMAGES = 8054  # images of classes 1-98


def get_config(variant: str = "pa") -> ml_collections.ConfigDict:
    return idml_retrieval_config(
        variant,
        dataset="cars196",
        train_images=TRAIN_IMAGES,
        learning_rate=2.5e-4,
        lr_step_epochs=10,
        lr_gamma=0.5,
        ks=(1, 2, 4, 8),
    )
