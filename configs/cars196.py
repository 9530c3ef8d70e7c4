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

from probdml.recipes import proxy_anchor_config


def get_config(recipe: str = "resnet50") -> ml_collections.ConfigDict:
    return proxy_anchor_config("cars196", recipe)
