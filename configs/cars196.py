"""ProxyAnchor baseline on Cars196 (classes 1-98 train, 99-196 test): the official recipe.

The protocol of configs/cub200.py (Kim et al., CVPR 2020, official code): ImageNet-pretrained
ResNet-50, GAP + GMP, 512-d L2-normalised embedding, ProxyAnchor (margin 0.1, alpha 32), random
batches, AdamW (weight decay 1e-4, proxies at 100x lr), gradient clipping at 10, frozen BatchNorm
statistics, warm-up training only the embedding layer and the proxies, 60 epochs, StepLR gamma 0.5.

Recipes (the config string):
  resnet50  (default) the README's ResNet-50 command: batch 120, lr 1e-4, 5 warm-up epochs, lr
            halved every 10 epochs.
  bs180     the README's Inception-BN hyper-parameters on ResNet-50: batch 180, lr 1e-4, 1 warm-up
            epoch, lr halved every 20 epochs.

    python -m probdml.main --config=configs/cars196.py --workdir=W --config.model.pretrained=DIR
"""

import ml_collections

from probdml.recipes import idml_retrieval_config

TRAIN_IMAGES = 8054  # images of classes 1-98
RECIPES = {
    "resnet50": dict(batch_size=120, warm_epochs=5, lr_step_epochs=10),
    "bs180": dict(batch_size=180, warm_epochs=1, lr_step_epochs=20),
}


def get_config(recipe: str = "resnet50") -> ml_collections.ConfigDict:
    recipe = recipe or "resnet50"
    if recipe not in RECIPES:
        raise ValueError(f"unknown ProxyAnchor recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    return idml_retrieval_config(
        "pa_baseline",
        dataset="cars196",
        train_images=TRAIN_IMAGES,
        learning_rate=1e-4,
        lr_gamma=0.5,
        ks=(1, 2, 4, 8),
        epochs=60,
        **RECIPES[recipe],
    )
