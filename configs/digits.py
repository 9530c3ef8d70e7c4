"""The embedded default: ProxyAnchor on the scikit-learn digits, classes 0-4 train, 5-9 test."""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config(num_steps=400, eval_every=100, log_every=50)
    config.selection.split = ""  # 5 training classes leave too few for a validation split: final step only

    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"
    config.data.data_dir = ""  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    config.data.batch_size = 64
    config.data.sampler = "random"  # or 'm_per_class'
    config.data.samples_per_class = 4
    config.data.mean = 0.5
    config.data.std = 0.5

    config.model = ml_collections.ConfigDict()
    config.model.name = "small_convnet"
    config.model.embed_dim = 64
    config.model.widths = (32, 64, 128)
    config.model.hidden = 256
    config.model.dtype = "float32"  # compute dtype: 'bfloat16' (or 'float16') for mixed precision

    config.loss = ml_collections.ConfigDict()
    config.loss.name = "proxy_anchor"
    config.loss.similarity = "cosine"
    config.loss.margin = 0.1
    config.loss.alpha = 32.0

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"
    config.optim.learning_rate = 3e-4
    config.optim.weight_decay = 1e-4
    config.optim.lr_mults = {"proxies": 100.0}
    config.optim.schedule = "constant"
    config.optim.grad_clip_value = 0.0  # 0 = no clipping

    return config
