"""IDML on Stanford Online Products (Ebay_train / Ebay_test: 11,318 / 11,316 classes), the paper's protocol.

ResNet-50, batch 120, 60 epochs, AdamW lr 6e-4 times 0.25 every 10 epochs, 5 warm-up epochs
(docs/methods/idml.md#training-protocol; probdml.recipes documents the variants and the protocol). Evaluated every
5 epochs (60,502 test images, k-means with 11,316 clusters for NMI).

    python -m probdml.main --config=configs/sop_idml.py --workdir=W --config.model.pretrained=DIR
    --config=configs/sop_idml.py:pa_compat   the official code's IDML-ProxyAnchor
"""

import ml_collections

from probdml.recipes import idml_retrieval_config

TRAIN_IMAGES = 59551  # Ebay_train.txt


def get_config(variant: str = "pa") -> ml_collections.ConfigDict:
    return idml_retrieval_config(
        variant,
        dataset="sop",
        train_images=TRAIN_IMAGES,
        learning_rate=6e-4,
        lr_step_epochs=10,
        lr_gamma=0.25,
        ks=(1, 10, 100),
        eval_every_epochs=5,
    )
