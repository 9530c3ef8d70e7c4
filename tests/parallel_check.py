"""Run by tests/test_parallel.py in a subprocess with 8 simulated CPU devices.

For each named config, one train step (or parallel_configs.STEPS of them) on the same global batches with a
1-device mesh and with an 8-device mesh; prints a JSON line per config with the two last losses and the
largest relative difference between the updated parameters and loss states (the cross-batch memory).
"""

import json
import sys

import jax
import numpy as np

from probdml import parallel, train


def one_step(config, num_devices, batches, num_classes):
    config.num_devices = num_devices
    mesh = parallel.make_mesh(num_devices)
    setup = train.create_setup(config, mesh, num_classes, batches[0]["image"].shape[1:])
    state = setup.state
    for batch in batches:
        state, metrics = setup.train_step(state, parallel.global_batch(mesh, batch))
    return float(metrics["loss"]), jax.device_get((state.params, state.loss_state))


def main(names):
    from tests import parallel_configs

    assert jax.device_count() == 8, jax.devices()
    for name in names:
        config, batch, num_classes = parallel_configs.CONFIGS[name]()
        batches = parallel_configs.batches(name, batch, num_classes)
        loss1, (p1, s1) = one_step(config, 1, batches, num_classes)
        loss8, (p8, s8) = one_step(config, 8, batches, num_classes)
        diffs = [
            float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
            for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p8, s8)), strict=True)
        ]
        changed = any(
            not np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(parallel_configs.initial_params(config, batch, num_classes)))
        )
        print(json.dumps({"name": name, "loss1": loss1, "loss8": loss8, "max_rel_param_diff": max(diffs), "changed": changed}))


if __name__ == "__main__":
    main(sys.argv[1:])
