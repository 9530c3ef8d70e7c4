"""The embedded default: ProxyAnchor on the scikit-learn digits, classes 0-4 train, 5-9 test."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_steps = 400
    config.log_every = 50
    config.eval_every = 100
    config.checkpoint_every = 100
    config.keep_checkpoints = 3
    config.checkpoint_best_metric = "test/recall@1"  # also keep the best checkpoint by this metric ('' = off)
    config.num_devices = 0  # data-parallel over this many devices (0 = all)

    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False  # jax.distributed.initialize() for multi-process runs
    config.distributed.coordinator_address = ""  # '' = auto-detect (TPU pods, SLURM, ...)
    config.distributed.num_processes = 1
    config.distributed.process_id = 0

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

    config.eval = ml_collections.ConfigDict()
    config.eval.ks = (1, 2, 4, 8)
    config.eval.metric = "cosine"
    config.eval.clustering = True  # also NMI / AMI / pairwise F1 of k-means
    config.eval.batch_size = 512
    return config
