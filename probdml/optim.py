"""Optimizers with parameter groups (network, proxies, temperature, ...) and learning-rate schedules."""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import optax

from probdml.errors import ConfigError, unknown_choice

OPTIMIZERS: dict[str, Callable[[optax.ScalarOrSchedule, float], optax.GradientTransformation]] = {
    "adamw": lambda lr, wd: optax.adamw(lr, weight_decay=wd),
    # torch.optim.Adam / SGD semantics: L2 penalty coupled into the gradient before the update.
    "adam": lambda lr, wd: optax.chain(optax.add_decayed_weights(wd), optax.adam(lr)),
    "sgd": lambda lr, wd: optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9)),
}
SCHEDULES = ("constant", "step", "cosine")


def param_groups(params: dict) -> dict:
    """Group label of every parameter leaf: 'model' for the network, and for the loss parameters
    the top-level key of `params['loss']` (e.g. 'proxies')."""
    return {
        "model": jax.tree.map(lambda _: "model", params["model"]),
        "loss": {group: jax.tree.map(lambda _, g=group: g, sub) for group, sub in params["loss"].items()},
    }


def learning_rate_schedule(optim_cfg: ml_collections.ConfigDict, base_lr: float) -> optax.Schedule:
    """constant; step: base_lr * gamma^k after the k-th of `optim_cfg.boundaries` (in steps);
    cosine: cosine decay from base_lr to 0 over `optim_cfg.decay_steps`."""
    name = optim_cfg.get("schedule", "constant")
    if name == "constant":
        return optax.constant_schedule(base_lr)
    if name == "step":
        return optax.piecewise_constant_schedule(base_lr, {int(b): float(optim_cfg.gamma) for b in optim_cfg.boundaries})
    if name == "cosine":
        return optax.cosine_decay_schedule(base_lr, int(optim_cfg.decay_steps))
    raise unknown_choice("learning-rate schedule", name, SCHEDULES)


def validate(optim_cfg: ml_collections.ConfigDict) -> None:
    if optim_cfg.name not in OPTIMIZERS:
        raise unknown_choice("optimizer", optim_cfg.name, OPTIMIZERS)
    if optim_cfg.get("schedule", "constant") not in SCHEDULES:
        raise unknown_choice("learning-rate schedule", optim_cfg.schedule, SCHEDULES)


def make_optimizer(optim_cfg: ml_collections.ConfigDict, params: dict) -> optax.GradientTransformation:
    """`optim_cfg.name` per group with learning rate lr * lr_mults[group] (a multiplier of 0 freezes
    the group), after optional element-wise gradient clipping to [-grad_clip_value, grad_clip_value]."""
    validate(optim_cfg)
    labels = param_groups(params)
    groups = set(jax.tree.leaves(labels))
    mults = dict(optim_cfg.get("lr_mults", {}))
    unknown = sorted(set(mults) - groups)
    if unknown:
        raise ConfigError(f"optim.lr_mults names unknown parameter group {unknown[0]!r}; valid: {', '.join(sorted(groups))}")
    transforms = {}
    for group in sorted(groups):
        mult = float(mults.get(group, 1.0))
        if mult == 0.0:
            transforms[group] = optax.set_to_zero()
        else:
            lr = learning_rate_schedule(optim_cfg, optim_cfg.learning_rate * mult)
            transforms[group] = OPTIMIZERS[optim_cfg.name](lr, optim_cfg.weight_decay)
    tx = optax.multi_transform(transforms, labels)
    if optim_cfg.get("grad_clip_value"):
        tx = optax.chain(optax.clip(float(optim_cfg.grad_clip_value)), tx)
    return tx
