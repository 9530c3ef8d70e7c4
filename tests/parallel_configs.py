"""Small configs and batches for the 1-vs-8-device equivalence check (tests/parallel_check.py)."""

import jax
import ml_collections
import numpy as np

from probdml import parallel, train


def _base():
    from configs import digits

    config = digits.get_config()
    config.model.widths = (8, 16)
    config.model.hidden = 32
    config.model.embed_dim = 16
    config.data.batch_size = 32
    return config


def _batch(num_classes, batch_size=32, shape=(8, 8, 1), seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(batch_size, *shape)).astype(np.float32),
        "label": np.repeat(np.arange(batch_size // 4) % num_classes, 4).astype(np.int32),
    }


def proxy_anchor():
    return _base(), _batch(5), 5


def idml_mixup():
    """IDML-ProxyAnchor (two heads, introspective metric) with the Mixup scheme: one lam and permutation
    for the global batch."""
    from configs import digits_idml

    config = digits_idml.get_config()
    config.model.widths = (8, 16)
    config.model.hidden = 32
    config.model.embed_dim = 16
    config.model.uncertainty_dim = 16
    config.data.batch_size = 32
    return config, _batch(5), 5


def triplet_semihard():
    config = _base()
    config.loss = ml_collections.ConfigDict(dict(name="triplet", similarity="cosine", margin=0.1, miner="semihard"))
    config.optim.lr_mults = {}
    return config, _batch(5), 5


def el_nivmf():
    from configs import digits_nivmf

    config = digits_nivmf.get_config()
    config.model.widths = (8, 16)
    config.model.hidden = 32
    config.model.embed_dim = 16
    config.data.batch_size = 32
    config.loss.warm_start = False  # the check runs create_setup and one step, not train_and_evaluate
    config.loss.guidance_weight = 1.0
    return config, _batch(5), 5


def contrastive_memory():
    """Contrastive loss with a cross-batch memory of 80 slots, run for STEPS[...] = 2 batches of 32 (the second
    step compares its batch with both): the memory must hold the global batch, replicated."""
    config = _base()
    config.loss = ml_collections.ConfigDict(dict(name="contrastive", similarity="cosine", miner="none",
                                                 memory_size=80))
    config.optim.lr_mults = {}
    # SGD: a second Adam step divides by sqrt(v) of near-zero bias gradients, which magnifies the last-bit
    # differences of the two reduction orders (5e-6 relative on a bias with Adam; 3.8e-6 with SGD, bar 1e-5)
    config.optim.name = "sgd"
    return config, _batch(5), 5


CONFIGS = {
    "proxy_anchor": proxy_anchor,
    "triplet_semihard": triplet_semihard,
    "idml_mixup": idml_mixup,
    "el_nivmf": el_nivmf,
    "contrastive_memory": contrastive_memory,
}
# Configs run for several steps (batch t > 0: `_batch(num_classes, seed=t)`); the others take one step.
STEPS = {"contrastive_memory": 2}


def batches(name, batch, num_classes):
    """The batches of config `name`: its own, then one per further step."""
    return [batch] + [_batch(num_classes, seed=t) for t in range(1, STEPS.get(name, 1))]


def initial_params(config, batch, num_classes):
    config.num_devices = 1
    setup = train.create_setup(config, parallel.make_mesh(1), num_classes, batch["image"].shape[1:])
    return jax.device_get(setup.state.params)
