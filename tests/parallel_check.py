"""Run by tests/test_parallel.py in a subprocess with 8 simulated CPU devices.

For each named config, one train step on the same global batch with a 1-device mesh and with an
8-device mesh; prints a JSON line per config with the two losses and the largest relative
difference between the updated parameters.
"""

import json
import sys

import jax
import numpy as np

from probdml import parallel, train


def one_step(config, num_devices, batch, num_classes):
    config.num_devices = num_devices
    mesh = parallel.make_mesh(num_devices)
    setup = train.create_setup(config, mesh, num_classes, batch["image"].shape[1:])
    state, metrics = setup.train_step(setup.state, parallel.global_batch(mesh, batch))
    return float(metrics["loss"]), jax.device_get(state.params)


def main(names):
    from tests import parallel_configs

    assert jax.device_count() == 8, jax.devices()
    for name in names:
        config, batch, num_classes = parallel_configs.CONFIGS[name]()
        loss1, p1 = one_step(config, 1, batch, num_classes)
        loss8, p8 = one_step(config, 8, batch, num_classes)
        diffs = [
            float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
            for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8))
        ]
        changed = any(
            not np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(parallel_configs.initial_params(config, batch, num_classes)))
        )
        print(json.dumps({"name": name, "loss1": loss1, "loss8": loss8, "max_rel_param_diff": max(diffs), "changed": changed}))


if __name__ == "__main__":
    main(sys.argv[1:])
