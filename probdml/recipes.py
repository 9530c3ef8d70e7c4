"""Experiment recipes shared by the files in configs/: the IDML retrieval protocol (specs/idml.md section 4).

`idml_retrieval_config(...)` returns a complete ml_collections config for one dataset and one variant:

  '<loss>'           IDML with that Table-1 loss ('pa', 'tsh', 'pn', 'fap', 'con', 'mdw', 'ms'): the
                     paper's model and metric (unnormalised uncertainty, no beta offset, one alpha).
  'pa_compat'        IDML-ProxyAnchor as the official code runs it (ISM_COMPAT_PRESET; u L2-normalised).
  '<loss>_baseline'  the same loss, recipe and budget without IDML (cosine, no uncertainty head, no Mixup):
                     the "*" rows of Table 1.

The protocol: ImageNet-pretrained ResNet-50 (config.model.pretrained=DIR is required: a directory
written by `python -m probdml.models.convert`), GAP + GMP summed, 512-d semantic and uncertainty heads,
frozen BatchNorm statistics, random batches of 120 (class-balanced batches of 4 per class for the
pair losses, whose recipe the official repository does not hold), AdamW (weight decay 1e-4) with the
proxies at 100x the learning rate, element-wise gradient clipping at 10, a per-epoch step schedule,
a warm-up of 5 epochs in which only the semantic head and the proxies train (the backbone, its
BatchNorm affine parameters and the uncertainty head frozen; BN affine trainable afterwards, as the
official code does, or never with --config.optim.lr_mults.backbone_bn=0), Mixup (lam ~ Beta(1, 1), clean weight 1), 60 epochs, evaluation on the test
classes with the best recall@1 checkpoint kept (the official model selection; the final metrics are
the last epoch's).

The semantic distance alpha of each loss is the one its base distance uses, so that with zero
uncertainty the IDML loss is the base loss exactly: alpha = 1 - cos for the cosine losses (PA, PN, MS),
the chord ||x^ - y^|| for contrastive, triplet and margin, ||x^ - y^||^2 for FastAP.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from probdml.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from probdml.models.embedding import PARAM_GROUPS
from probdml.similarity import ISM_COMPAT_PRESET

# Table-1 losses: the loss config (the official wrappers' hyper-parameters, objective.LOSS_DEFAULTS)
# and the ISM's alpha_mode matching the loss's base distance.
IDML_LOSSES: dict[str, tuple[dict, str]] = {
    "pa": (dict(name="proxy_anchor", margin=0.1, alpha=32.0), "cos"),
    "tsh": (dict(name="triplet", margin=0.1, miner="semihard"), "euclid_norm"),
    "pn": (dict(name="proxy_nca", scale=64.0), "cos"),
    "fap": (dict(name="fast_ap", num_bins=10, histogram_max=4.0, distance_power=1.0), "sqeuclid_norm"),
    "con": (dict(name="contrastive", pos_margin=0.0, neg_margin=0.5, miner="none"), "euclid_norm"),
    "mdw": (dict(name="margin", margin=0.2, beta=1.2, miner="distance_weighted"), "euclid_norm"),
    "ms": (dict(name="multi_similarity", alpha=2.0, beta=50.0, base=0.5, miner="multi_similarity", epsilon=0.1), "cos"),
}
PROXY_VARIANTS = ("pa", "pn")
VARIANTS = (*IDML_LOSSES, "pa_compat", *(f"{k}_baseline" for k in IDML_LOSSES))


def imagenet_data_config(
    dataset: str, batch_size: int, sampler: str, samples_per_class: int
) -> ml_collections.ConfigDict:
    """The data section shared by the retrieval recipes: `dataset` from the TFDS data/manual dirs, train
    augmentation random-resized-crop 224 (scale 0.08-1, ratio 3/4-4/3) + horizontal flip, evaluation
    resize 256 + centre crop 224, ImageNet mean/std."""
    data = ml_collections.ConfigDict()
    data.name = dataset
    data.data_dir = ""
    data.manual_dir = ""
    data.download = True  # False: only the manual directory; a missing file fails at once
    data.batch_size = batch_size
    data.sampler = sampler
    data.samples_per_class = samples_per_class
    data.image_size = 224
    data.resize_size = 256
    data.crop_scale = (0.08, 1.0)
    data.crop_ratio = (3 / 4, 4 / 3)
    data.hflip = True
    data.mean = IMAGENET_MEAN
    data.std = IMAGENET_STD
    return data


def idml_retrieval_config(
    variant: str,
    *,
    dataset: str,
    train_images: int,
    learning_rate: float,
    lr_step_epochs: int,
    lr_gamma: float,
    ks: tuple[int, ...],
    eval_every_epochs: int = 1,
    batch_size: int = 120,
    epochs: int = 60,
    warm_epochs: int = 5,
    bn_affine_trainable_after_warm: bool = True,
) -> ml_collections.ConfigDict:
    """The IDML retrieval config of `variant` (one of VARIANTS) on `dataset` (see the module docstring).

    Epoch-based quantities become steps with steps_per_epoch = train_images // batch_size (the last
    incomplete batch dropped, as the official loader's drop_last): the learning rate is multiplied by
    `lr_gamma` at every multiple of `lr_step_epochs` epochs (torch StepLR stepped per epoch).
    """
    variant = variant or "pa"
    if variant not in VARIANTS:
        raise ValueError(f"unknown IDML variant {variant!r}; valid: {', '.join(VARIANTS)}")
    loss_key = variant.split("_")[0]
    baseline = variant.endswith("_baseline")
    compat = variant == "pa_compat"
    steps_per_epoch = train_images // batch_size
    warm_steps = warm_epochs * steps_per_epoch

    config = ml_collections.ConfigDict()
    config.seed = 1
    config.num_steps = epochs * steps_per_epoch
    config.log_every = 50
    config.eval_every = eval_every_epochs * steps_per_epoch
    config.checkpoint_every = eval_every_epochs * steps_per_epoch
    config.keep_checkpoints = 2
    # train on 'train_sub', select on 'val' (held-out training classes); the official codes' best-on-test
    # reporting is --config.selection.split=test, and training on every training class with the final step
    # reported is --config.selection.split='' (see probdml.train.Selection)
    config.selection = ml_collections.ConfigDict({"split": "val", "metric": "recall@1"})
    config.num_devices = 0
    config.distributed = ml_collections.ConfigDict(
        dict(enabled=False, coordinator_address="", num_processes=1, process_id=0)
    )

    config.data = imagenet_data_config(
        dataset, batch_size, "random" if loss_key in PROXY_VARIANTS else "m_per_class", samples_per_class=4
    )

    config.model = ml_collections.ConfigDict()
    config.model.name = "embedding_net"
    config.model.backbone = "resnet50"
    config.model.pretrained = config_dict.placeholder(str)  # required: --config.model.pretrained=DIR
    config.model.pooling = "avg+max"
    config.model.frozen_bn_stats = True
    config.model.embed_dim = 512
    config.model.normalize_embedding = True
    config.model.uncertainty_dim = 0 if baseline else 512
    config.model.uncertainty_l2_normalize = compat
    config.model.uncertainty_activation = "none"
    config.model.dtype = "float32"  # compute dtype: 'bfloat16' on TPU/GPU for mixed precision

    loss, alpha_mode = IDML_LOSSES[loss_key]
    config.loss = ml_collections.ConfigDict(loss)
    if baseline:
        config.loss.similarity = "cosine"
    else:
        config.loss.similarity = "introspective"
        config.loss.similarity_options = ml_collections.ConfigDict(
            dict(alpha_mode=alpha_mode, beta_form="sumvec", ism_form="relative", tau=5.0, beta_offset=0.0,
                 uncertainty_l2norm=False)
        )
        if compat:
            config.loss.similarity_options.update(ISM_COMPAT_PRESET)
    if baseline and loss_key == "fap":
        config.loss.distance_power = 2.0  # chord^2 = ||x^ - y^||^2, FastAP's distance

    config.mixup = ml_collections.ConfigDict(dict(enabled=not baseline, alpha=1.0, clean_weight=1.0))

    groups = ["backbone_bn", "backbone", "embedding"] + ([] if baseline else ["uncertainty"])
    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"
    config.optim.learning_rate = learning_rate
    config.optim.weight_decay = 1e-4
    config.optim.model_groups = {g: PARAM_GROUPS[g] for g in groups}
    # backbone_bn 0 = BatchNorm scale/bias frozen for good (override: --config.optim.lr_mults.backbone_bn=0)
    config.optim.lr_mults = {"backbone_bn": 1.0 if bn_affine_trainable_after_warm else 0.0}
    if loss_key in PROXY_VARIANTS:
        config.optim.lr_mults["proxies"] = 100.0
    config.optim.frozen_until = {g: warm_steps for g in groups if g != "embedding"}
    config.optim.schedule = "step"
    config.optim.boundaries = tuple(range(lr_step_epochs * steps_per_epoch, config.num_steps, lr_step_epochs * steps_per_epoch))
    config.optim.gamma = lr_gamma
    config.optim.grad_clip_value = 10.0

    config.eval = ml_collections.ConfigDict()
    config.eval.ks = ks
    config.eval.metric = "cosine"
    config.eval.clustering = True
    config.eval.batch_size = 256
    return config


# ProxyAnchor's official recipes on ResNet-50 (Kim et al., CVPR 2020; tjddus9597/Proxy-Anchor-CVPR2020
# README commands and train.py defaults): 60 epochs, AdamW lr 1e-4 (SOP 6e-4), StepLR per epoch.
PROXY_ANCHOR_RECIPES: dict[str, dict[str, dict]] = {
    "cub200": {
        "resnet50": dict(batch_size=120, warm_epochs=5, lr_step_epochs=5),
        "bs180": dict(batch_size=180, warm_epochs=1, lr_step_epochs=10),
    },
    "cars196": {
        "resnet50": dict(batch_size=120, warm_epochs=5, lr_step_epochs=10),
        "bs180": dict(batch_size=180, warm_epochs=1, lr_step_epochs=20),
    },
    "sop": {
        "resnet50": dict(batch_size=180, warm_epochs=1, lr_step_epochs=20, learning_rate=6e-4, lr_gamma=0.25,
                         ks=(1, 10, 100, 1000), eval_every_epochs=5),
    },
}
# Images of the training classes (CUB: classes 1-100; Cars196: classes 1-98; SOP: Ebay_train.txt).
TRAIN_IMAGES = {"cub200": 5864, "cars196": 8054, "sop": 59551}


def proxy_anchor_config(dataset: str, recipe: str = "resnet50") -> ml_collections.ConfigDict:
    """The official ProxyAnchor baseline `recipe` on `dataset` (PROXY_ANCHOR_RECIPES), built by
    `idml_retrieval_config('pa_baseline', ...)`: the IDML protocol pieces without IDML. SOP trains its
    BatchNorm statistics (`--bn-freeze 0`) and evaluates without clustering, as the official command."""
    recipes = PROXY_ANCHOR_RECIPES[dataset]
    recipe = recipe or "resnet50"
    if recipe not in recipes:
        raise ValueError(f"unknown ProxyAnchor recipe {recipe!r}; valid: {', '.join(recipes)}")
    options = dict(learning_rate=1e-4, lr_gamma=0.5, ks=(1, 2, 4, 8), epochs=60) | recipes[recipe]
    config = idml_retrieval_config("pa_baseline", dataset=dataset, train_images=TRAIN_IMAGES[dataset], **options)
    if dataset == "sop":
        config.model.frozen_bn_stats = False
        config.eval.clustering = False
    return config
