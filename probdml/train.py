"""Training: state, optimizer, jitted train step and the `train_and_evaluate` loop."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from probdml import checkpointing, data, evaluate, models, objective, writers
from probdml.errors import ConfigError, unknown_choice

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs: the step, parameters {'model', 'loss'}, optimizer state, BN stats.

    Batches and PRNG keys are pure functions of (seed, step), so they need no state of their own.
    """

    step: Array
    params: dict
    opt_state: Any
    batch_stats: dict


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adamw": lambda lr, wd: optax.adamw(lr, weight_decay=wd),
    "adam": lambda lr, wd: optax.chain(optax.add_decayed_weights(wd), optax.adam(lr)),
    "sgd": lambda lr, wd: optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9)),
}
SCHEDULES = ("constant", "step", "cosine")


def param_groups(params: dict) -> dict:
    """Optimizer group label of every parameter leaf: 'model' for the network, and for the loss
    parameters the top-level key of `params['loss']` (e.g. 'proxies')."""
    return {
        "model": jax.tree.map(lambda _: "model", params["model"]),
        "loss": {group: jax.tree.map(lambda _, g=group: g, sub) for group, sub in params["loss"].items()},
    }


def learning_rate_schedule(optim_cfg: ml_collections.ConfigDict, base_lr: float) -> optax.Schedule:
    """constant; step: lr * gamma^(number of boundaries passed) at optim_cfg.boundaries (in steps);
    cosine: cosine decay to 0 over optim_cfg.decay_steps."""
    name = optim_cfg.get("schedule", "constant")
    if name == "constant":
        return optax.constant_schedule(base_lr)
    if name == "step":
        return optax.piecewise_constant_schedule(
            base_lr, {int(b): float(optim_cfg.gamma) for b in optim_cfg.boundaries}
        )
    if name == "cosine":
        return optax.cosine_decay_schedule(base_lr, int(optim_cfg.decay_steps))
    raise unknown_choice("learning-rate schedule", name, SCHEDULES)


def make_optimizer(optim_cfg: ml_collections.ConfigDict, params: dict) -> optax.GradientTransformation:
    """Per-group optimizer: `optim_cfg.name` with learning rate lr * lr_mults[group] (0 freezes a
    group), optional element-wise gradient clipping by value before the update."""
    if optim_cfg.name not in OPTIMIZERS:
        raise unknown_choice("optimizer", optim_cfg.name, OPTIMIZERS)
    labels = param_groups(params)
    groups = set(jax.tree.leaves(labels))
    mults = dict(optim_cfg.get("lr_mults", {}))
    unknown = sorted(set(mults) - groups)
    if unknown:
        raise ConfigError(f"optim.lr_mults names unknown parameter group {unknown[0]!r}; valid: {', '.join(sorted(groups))}")
    transforms = {}
    for group in groups:
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


def make_train_step(model: nn.Module, obj: objective.Objective, tx: optax.GradientTransformation, seed: int):
    """train_step(state, batch) -> (state, metrics): one optimizer step on a batch
    {'image': [B, ...], 'label': [B]}; the step's PRNG key is fold_in(key(seed), step)."""
    base_key = jax.random.key(seed)

    def loss_fn(params, batch_stats, batch, key):
        variables = {"params": params["model"], **({"batch_stats": batch_stats} if batch_stats else {})}
        outputs = model.apply(variables, batch["image"], train=True)
        loss, aux = obj.apply(params["loss"], outputs, batch["label"], key)
        return loss, aux

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(base_key, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.batch_stats, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}

    return train_step


def validate_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Fail early, with a one-line ConfigError, on names and paths that cannot work."""
    parent = os.path.dirname(os.path.abspath(workdir))
    if not os.path.isdir(parent):
        raise ConfigError(f"workdir parent directory does not exist: {parent}")
    data.check_name(config.data.name)
    if config.data.sampler not in data.pipeline.SAMPLERS:
        raise unknown_choice("sampler", config.data.sampler, data.pipeline.SAMPLERS)
    if config.model.name not in models.MODELS:
        raise unknown_choice("model", config.model.name, models.MODELS)
    if config.loss.name not in objective.LOSSES:
        raise unknown_choice("loss", config.loss.name, objective.LOSSES)
    if config.optim.name not in OPTIMIZERS:
        raise unknown_choice("optimizer", config.optim.name, OPTIMIZERS)
    if config.optim.get("schedule", "constant") not in SCHEDULES:
        raise unknown_choice("learning-rate schedule", config.optim.schedule, SCHEDULES)


class _Preemption:
    """Turns SIGTERM into a flag the loop polls, so it can checkpoint before exiting."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _progress(total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not sys.stderr.isatty())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train `config` in `workdir` (resuming from its latest checkpoint) and return the final metrics.

    Writes checkpoints to <workdir>/checkpoints, TensorBoard events and metrics.jsonl to <workdir>,
    and the final evaluation to <workdir>/final_metrics.json.
    """
    validate_config(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    train_ds = data.load_split(config.data, "train")
    test_ds = data.load_split(config.data, "test")
    model = models.build_model(config.model)
    obj = objective.build_objective(config.loss, train_ds.num_classes, config.model.embed_dim)

    init_key, loss_key = jax.random.split(jax.random.key(config.seed))
    sample = np.zeros((1, *train_ds.images.shape[1:]), np.float32)
    variables = model.init(init_key, sample, train=False)
    params = {"model": variables["params"], "loss": obj.init(loss_key)}
    tx = make_optimizer(config.optim, params)
    state = TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        opt_state=tx.init(params),
        batch_stats=variables.get("batch_stats", {}),
    )

    mngr = checkpointing.manager(workdir, config.keep_checkpoints)
    restored = checkpointing.restore_latest(mngr, state)
    if restored is not None:
        state = restored
        writers.log(f"resumed from checkpoint at step {int(state.step)}")
    start = int(state.step)

    train_step = jax.jit(make_train_step(model, obj, tx, config.seed), donate_argnums=0)

    @jax.jit
    def apply_eval(params, batch_stats, images):
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        return model.apply(variables, images, train=False)

    def run_eval(state: TrainState) -> dict[str, float]:
        outputs = evaluate.embed(
            lambda x: apply_eval(state.params["model"], state.batch_stats, x),
            config.data,
            test_ds,
            config.eval.batch_size,
        )
        return evaluate.retrieval(outputs, test_ds.labels, config.eval)

    writer = writers.MetricWriter(workdir)
    batches = data.pipeline.train_batches(config.data, train_ds, config.seed, start)
    num_steps = config.num_steps
    writers.log(
        f"training {config.loss.name} on {config.data.name}: {len(train_ds)} train images "
        f"({train_ds.num_classes} classes), {len(test_ds)} test images ({test_ds.num_classes} classes), "
        f"steps {start} -> {num_steps}"
    )
    bar = _progress(num_steps, start)
    t0, last_step = time.perf_counter(), start
    eval_metrics: dict[str, float] = {}
    with _Preemption() as preemption:
        for step in range(start + 1, num_steps + 1):
            state, step_metrics = train_step(state, next(batches))
            bar.update(1)
            if step % config.log_every == 0 or step == num_steps:
                scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                if not all(np.isfinite(v) for v in scalars.values()):
                    raise FloatingPointError(f"non-finite training metrics at step {step}: {scalars}")
                rate = (step - last_step) / max(time.perf_counter() - t0, 1e-9)
                t0, last_step = time.perf_counter(), step
                eta = (num_steps - step) / max(rate, 1e-9)
                writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()} | {"train/steps_per_sec": rate})
                writers.log(f"step {step}/{num_steps}  {writers.format_scalars(scalars)}  {rate:.1f} steps/s  ETA {eta:.0f}s")
            if step % config.eval_every == 0 or step == num_steps:
                eval_metrics = run_eval(state)
                writer.write_scalars(step, {f"test/{k}": v for k, v in eval_metrics.items()})
                writers.log(f"eval step {step}  {writers.format_scalars(eval_metrics)}")
            if step % config.checkpoint_every == 0 or step == num_steps or preemption.requested:
                checkpointing.save(mngr, step, state)
            if preemption.requested:
                mngr.wait_until_finished()
                bar.close()
                writer.close()
                writers.log(f"SIGTERM: saved a checkpoint at step {step}; rerun the same command to resume")
                raise SystemExit(143)
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    if not eval_metrics:
        eval_metrics = run_eval(state)
    writer.close()
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
        json.dump({"step": int(state.step), **eval_metrics}, f, indent=1)
    return eval_metrics
