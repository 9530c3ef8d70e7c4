"""ProxyAnchor baseline on CUB-200-2011 (classes 1-100 train, 101-200 test): the official recipe.

Kim et al., "Proxy Anchor Loss for Deep Metric Learning" (CVPR 2020), official code
(tjddus9597/Proxy-Anchor-CVPR2020, train.py and the README commands): ImageNet-pretrained ResNet-50,
GAP + GMP summed, 512-d L2-normalised embedding, ProxyAnchor (margin 0.1, alpha 32) on cosine
similarity, random batches (no class-balanced sampler), AdamW (weight decay 1e-4) with the proxies
at 100x the learning rate, element-wise gradient clipping at 10, frozen BatchNorm statistics, a
warm-up in which only the embedding layer and the proxies train, 60 epochs, StepLR (gamma 0.5)
stepped per epoch, test recall@1 for the kept checkpoint. Built by
probdml.recipes.idml_retrieval_config('pa_baseline', ...): the same protocol pieces as the IDML
configs, without IDML.

Recipes (the config string):
  resnet50  (default) the README's ResNet-50 command: batch 120, lr 1e-4, 5 warm-up epochs, lr
            halved every 5 epochs.
  bs180     the README's Inception-BN hyper-parameters on ResNet-50: batch 180, lr 1e-4, 1 warm-up
            epoch, lr halved every 10 epochs.

    python -m probdml.main --config=configs/cub200.py --workdir=W --config.model.pretrained=DIR
    python -m probdml.main --config=configs/cub200.py:bs180 --workdir=W --config.model.pretrained=DIR

DIR is a directory written by `python -m probdml.models.convert` (torchvision ResNet-50 weights).
"""

import ml_collections

from probdml.recipes import idml_retrieval_config

TRAIN_IMAGES = 5864  # images of classes 1-100
RECIPES = {
    "resnet50": dict(batch_size=120, warm_epochs=5, lr_step_epochs=5),
    "bs180": dict(batch_size=180, warm_epochs=1, lr_step_epochs=10),
}


def get_config(recipe: str = "resnet50") -> ml_collections.ConfigDict:
    recipe = recipe or "resnet50"
    if recipe not in RECIPES:
        raise ValueError(f"unknown ProxyAnchor recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    return idml_retrieval_config(
        "pa_baseline",
        dataset="cub200",
        train_images=TRAIN_IMAGES,
        learning_rate=1e-4,
        lr_gamma=0.5,
        ks=(1, 2, 4, 8),
        epochs=60,
        **RECIPES[recipe],
    )
