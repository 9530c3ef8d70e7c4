"""Run infrastructure shared by the embedded-dataset configs (digits, glyphs): steps, logging,
checkpointing, devices, multi-process setup and evaluation. Each dataset config adds its data, model,
loss and optimizer sections."""

import ml_collections


def get_config(num_steps: int, eval_every: int, log_every: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_steps = num_steps
    config.log_every = log_every
    config.eval_every = eval_every
    config.checkpoint_every = eval_every
    config.keep_checkpoints = 3

    # Model selection (probdml.train.Selection): 'val' trains on the 'train_sub' classes, evaluates the held-out
    # training classes ('val') every eval_every steps and also reports the test metrics of the checkpoint with
    # the best val/<metric>; '' reports the final step only; 'test' is the official codes' best-on-test
    # protocol (biased upwards, for reproducing papers only).
    config.selection = ml_collections.ConfigDict()
    config.selection.split = "val"
    config.selection.metric = "recall@1"
    config.num_devices = 0  # data-parallel over this many devices (0 = all)

    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False  # jax.distributed.initialize() for multi-process runs
    config.distributed.coordinator_address = ""  # '' = auto-detect (TPU pods, SLURM, ...)
    config.distributed.num_processes = 1
    config.distributed.process_id = 0

    config.eval = ml_collections.ConfigDict()
    config.eval.ks = (1, 2, 4, 8)
    config.eval.metric = "cosine"
    config.eval.clustering = True  # also NMI / AMI / pairwise F1 of k-means
    config.eval.batch_size = 512
    return config
