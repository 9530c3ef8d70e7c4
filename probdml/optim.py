"""Optimizers with parameter groups (network, proxies, temperature, ...) and learning-rate schedules."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from probdml.errors import ConfigError, unknown_choice

# Each optimizer's update direction for a weight decay wd, before the learning-rate scaling
# (-lr(step) * direction): optax.adamw / adam / sgd without their final scale_by_learning_rate.
OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "adamw": lambda wd: optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(wd)),
    # torch.optim.Adam / SGD semantics: L2 penalty coupled into the gradient before the update.
    "adam": lambda wd: optax.chain(optax.add_decayed_weights(wd), optax.scale_by_adam()),
    "sgd": lambda wd: optax.chain(optax.add_decayed_weights(wd), optax.trace(decay=0.9)),
}
SCHEDULES = ("constant", "step", "cosine")


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_groups(params: dict, model_groups: dict[str, str] | None = None) -> dict:
    """Group label of every parameter leaf.

    Network parameters: the name of the `model_groups` entry whose regular expression matches the
    parameter's path (e.g. 'backbone/layer1/0/conv1/kernel') in full, else 'model'; a path matching
    two patterns is an error. Loss parameters: the top-level key of `params['loss']` (e.g. 'proxies').
    """
    patterns = {name: re.compile(rx) for name, rx in (model_groups or {}).items()}

    def model_label(path, _):
        p = _path_str(path)
        hits = [name for name, rx in patterns.items() if rx.fullmatch(p)]
        if len(hits) > 1:
            raise ConfigError(f"parameter {p!r} matches several optim.model_groups: {', '.join(hits)}")
        return hits[0] if hits else "model"

    return {
        "model": jax.tree_util.tree_map_with_path(model_label, params["model"]),
        "loss": {group: jax.tree.map(lambda _, g=group: g, sub) for group, sub in params["loss"].items()},
    }


class DelayedState(NamedTuple):
    count: jax.Array
    inner_state: optax.OptState


def delayed(inner: optax.GradientTransformation, start_step: int) -> optax.GradientTransformation:
    """`inner` frozen for the first `start_step` updates: zero updates and its state untouched, as a
    torch parameter with requires_grad=False (optimizer state created lazily at the first real step)."""

    def init(params):
        return DelayedState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        new_updates, new_inner = inner.update(updates, state.inner_state, params)
        active = state.count >= start_step
        new_updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
        new_inner = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_inner, state.inner_state)
        return new_updates, DelayedState(state.count + 1, new_inner)

    return optax.GradientTransformation(init, update)


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
    """`optim_cfg.name` per parameter group (see `param_groups`, `optim_cfg.model_groups`) with
    learning rate lr * lr_mults[group] (a multiplier of 0 freezes the group for good) and weight decay
    weight_decay * weight_decay_mults[group] (default 1; e.g. 0 for proxies and temperature), groups in
    `frozen_until` ({group: step}) frozen for that many steps (warm-up: zero updates, optimizer
    state created at the first real step, learning-rate schedule on the global step), after optional element-wise
    gradient clipping to [-grad_clip_value, grad_clip_value]; with `skip_nonfinite_updates`, a step
    whose gradients are not finite leaves the parameters unchanged (optax.apply_if_finite)."""
    validate(optim_cfg)
    labels = param_groups(params, dict(optim_cfg.get("model_groups", {})))
    groups = set(jax.tree.leaves(labels))
    mults = dict(optim_cfg.get("lr_mults", {}))
    frozen_until = dict(optim_cfg.get("frozen_until", {}))
    wd_mults = dict(optim_cfg.get("weight_decay_mults", {}))
    for field, names in (("lr_mults", mults), ("frozen_until", frozen_until), ("weight_decay_mults", wd_mults)):
        unknown = sorted(set(names) - groups)
        if unknown:
            raise ConfigError(
                f"optim.{field} names unknown parameter group {unknown[0]!r}; valid: {', '.join(sorted(groups))}"
            )
    transforms = {}
    for group in sorted(groups):
        mult = float(mults.get(group, 1.0))
        if mult == 0.0:
            transforms[group] = optax.set_to_zero()
        else:
            direction = OPTIMIZERS[optim_cfg.name](float(optim_cfg.weight_decay) * float(wd_mults.get(group, 1.0)))
            if frozen_until.get(group, 0) > 0:
                direction = delayed(direction, int(frozen_until[group]))
            # The schedule counts every step, frozen or not (torch's epoch-based LR schedulers).
            lr = learning_rate_schedule(optim_cfg, optim_cfg.learning_rate * mult)
            transforms[group] = optax.chain(direction, optax.scale_by_learning_rate(lr))
    tx = optax.multi_transform(transforms, labels)
    if optim_cfg.get("grad_clip_value"):
        tx = optax.chain(optax.clip(float(optim_cfg.grad_clip_value)), tx)
    if optim_cfg.get("skip_nonfinite_updates", False):
        tx = optax.apply_if_finite(tx, max_consecutive_errors=int(optim_cfg.get("max_consecutive_nonfinite", 10)))
    return tx
