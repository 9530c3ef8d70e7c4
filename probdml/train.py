"""Training: state, optimizer, jitted train step and the `train_and_evaluate` loop."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from probdml import checkpointing, config_checks, data, evaluate, models, objective, optim, parallel, writers
from probdml import workdir as workdir_lib
from probdml.errors import ConfigError, unknown_choice

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs: the step, parameters {'model', 'loss'}, optimizer state, BN stats,
    and the loss's state carried between steps ({'memory': CrossBatchMemory} with `loss.memory_size`, else {}).

    Batches and PRNG keys are pure functions of (seed, step), so they need no state of their own.
    """

    step: Array
    params: dict
    opt_state: Any
    batch_stats: dict
    loss_state: dict = flax.struct.field(default_factory=dict)


def mixup(key: Array, images: Array, alpha: float) -> tuple[Array, Array, Array]:
    """One Mixup draw for the whole batch: lam ~ Beta(alpha, alpha), a random permutation pi,
    mixed = lam * x + (1 - lam) * x[pi]. Returns (mixed images, lam, pi)."""
    lam_key, perm_key = jax.random.split(key)
    lam = jax.random.beta(lam_key, alpha, alpha).astype(images.dtype)
    perm = jax.random.permutation(perm_key, images.shape[0])
    return lam * images + (1.0 - lam) * images[perm], lam, perm


def make_train_step(
    model: nn.Module,
    obj: objective.Objective,
    tx: optax.GradientTransformation,
    seed: int,
    mixup_cfg: ml_collections.ConfigDict | None = None,
):
    """train_step(state, batch) -> (state, metrics): one optimizer step on a batch
    {'image': [B, ...], 'label': [B]}; the step's PRNG key is fold_in(key(seed), step).

    With Mixup enabled (the IDML official scheme), the loss is
    clean_weight * L(f(x), y) + lam * L(f(x_mix), y) + (1 - lam) * L(f(x_mix), y[pi]),
    x_mix = lam x + (1 - lam) x[pi], one lam ~ Beta(alpha, alpha) and permutation pi per global batch.
    """
    base_key = jax.random.key(seed)
    use_mixup = bool(mixup_cfg is not None and mixup_cfg.get("enabled", False))

    def forward(params, batch_stats, images):
        variables = {"params": params["model"]}
        if batch_stats:
            variables["batch_stats"] = batch_stats
            outputs, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
            return outputs, updated["batch_stats"]
        return model.apply(variables, images, train=True), batch_stats

    def loss_fn(params, batch_stats, loss_state, batch, key):
        loss_key, mix_key, mix_loss_key = jax.random.split(key, 3)
        outputs, batch_stats = forward(params, batch_stats, batch["image"])
        outputs = models.float32_outputs(outputs)
        if obj.init_state is not None:  # a loss with a state: the cross-batch memory enqueues the (global)
            if obj.update_state is not None:  # batch, then compares; others return their new state as aux
                loss_state = obj.update_state(loss_state, outputs, batch["label"])
            loss, aux = obj.apply(params["loss"], outputs, batch["label"], loss_key, loss_state)
            aux = dict(aux)
            loss_state = aux.pop("loss_state", loss_state)
        else:
            loss, aux = obj.apply(params["loss"], outputs, batch["label"], loss_key)
        if use_mixup:
            mixed, lam, perm = mixup(mix_key, batch["image"], float(mixup_cfg.alpha))
            mixed_out, batch_stats = forward(params, batch_stats, mixed)
            mixed_out = models.float32_outputs(mixed_out)
            key_a, key_b = jax.random.split(mix_loss_key)
            loss_a, _ = obj.apply(params["loss"], mixed_out, batch["label"], key_a)
            loss_b, _ = obj.apply(params["loss"], mixed_out, batch["label"][perm], key_b)
            clean = loss
            loss = float(mixup_cfg.get("clean_weight", 1.0)) * clean + lam * loss_a + (1.0 - lam) * loss_b
            aux = {**aux, "loss_clean": clean, "loss_mixed": lam * loss_a + (1.0 - lam) * loss_b, "mixup_lambda": lam}
        return loss, (aux, batch_stats, loss_state)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(base_key, state.step)
        (loss, (aux, batch_stats, loss_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, state.loss_state, batch, key
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats,
                                  loss_state=loss_state)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        if isinstance(opt_state, optax.ApplyIfFiniteState):
            metrics["skipped_steps"] = opt_state.total_notfinite
        return new_state, metrics

    return train_step


class Setup(NamedTuple):
    """A model, its objective and optimizer, the initial (replicated) state and the jitted step."""

    model: nn.Module
    objective: objective.Objective
    tx: optax.GradientTransformation
    state: TrainState
    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]


def create_setup(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_classes: int, image_shape: tuple[int, ...]
) -> Setup:
    """Build the model, objective and optimizer from `config`, initialise the state from
    `config.seed` (with the converted weights of `config.model.pretrained` merged in, if set;
    replicated over `mesh`), and jit the train step with the batch sharded over the
    mesh's 'data' axis and the state donated."""
    model = models.build_model(config.model)
    obj = objective.build_objective(config.loss, num_classes, config.model.embed_dim)
    init_key, loss_key = jax.random.split(jax.random.key(config.seed))
    variables = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    pretrained = models.check_pretrained(config.model)
    if pretrained:
        variables = models.load_pretrained_variables(model, variables, pretrained)
    params = {"model": variables["params"], "loss": obj.init(loss_key)}
    tx = optim.make_optimizer(config.optim, params)
    loss_state = {}
    if obj.init_state is not None:  # per-sample output shapes for the memory's slots
        check_memory(config)

        def outputs(v):
            return models.float32_outputs(model.apply(v, jnp.zeros((1, *image_shape)), train=False))

        like = jax.eval_shape(outputs, variables)
        loss_state = obj.init_state(like)
    state = TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        opt_state=tx.init(params),
        batch_stats=variables.get("batch_stats", {}),
        loss_state=loss_state,
    )
    replicated, batch_sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    train_step = jax.jit(
        make_train_step(model, obj, tx, config.seed, config.get("mixup")),
        in_shardings=(replicated, batch_sharded),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    return Setup(model, obj, tx, parallel.replicate(mesh, state), train_step)


def check_memory(config: ml_collections.ConfigDict) -> None:
    """A cross-batch memory (`loss.memory_size` > 0) holds at least one global batch and excludes Mixup
    (whose mixed images have no single label to enqueue); the dynamic soft margin loss, whose histogram is a
    state of its own, excludes Mixup too (the mixed batch would need a second one)."""
    mixup_on = config.get("mixup") is not None and config.mixup.get("enabled", False)
    if config.loss.name == "dynamic_soft_margin":
        if mixup_on:
            raise ConfigError("loss dynamic_soft_margin and mixup.enabled are exclusive: its histogram state "
                              "follows the clean batches only; set mixup.enabled=False or choose another loss")
        return
    size = objective.memory_size(config.loss)
    if not size:
        return
    if size < config.data.batch_size:
        raise ConfigError(f"loss.memory_size ({size}) must be at least data.batch_size ({config.data.batch_size}), "
                          "or 0 (no cross-batch memory)")
    if mixup_on:
        raise ConfigError("loss.memory_size > 0 and mixup.enabled are exclusive: the memory enqueues labelled "
                          "samples; set one of them off")


def warm_start(setup: Setup, state: TrainState, apply_fn: Callable[[Array], dict],
               config: ml_collections.ConfigDict, train_ds, mesh: jax.sharding.Mesh) -> TrainState:
    """The objective's warm start (e.g. proxies from class-mean embeddings) on the training set embedded
    with the evaluation transforms by the initial model; the result is replicated over `mesh`."""
    outputs = evaluate.embed(apply_fn, config.data, train_ds, config.eval.batch_size, mesh)
    loss_params = setup.objective.warm_start(
        jax.device_get(state.params["loss"]), jnp.asarray(outputs["embedding"]), jnp.asarray(train_ds.contiguous_labels())
    )
    writers.log(f"warm start of the loss parameters from {len(train_ds)} training embeddings")
    return parallel.replicate(mesh, state.replace(params={**state.params, "loss": loss_params}))


def validate_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Fail early, with a one-line ConfigError, on values, names and paths that cannot work."""
    config_checks.check_config(config)
    parent = os.path.dirname(os.path.abspath(workdir))
    if not os.path.isdir(parent):
        raise ConfigError(f"workdir parent directory does not exist: {parent}")
    data.check_builder_config(config.data)  # dataset name and builder config
    if config.data.sampler not in data.pipeline.SAMPLERS:
        raise unknown_choice("sampler", config.data.sampler, data.pipeline.SAMPLERS)
    if config.model.name not in models.MODELS:
        raise unknown_choice("model", config.model.name, models.MODELS)
    pretrained = models.check_pretrained(config.model)
    if pretrained and not os.path.isdir(pretrained):
        raise ConfigError(f"model.pretrained directory does not exist: {pretrained}")
    if config.loss.name not in objective.LOSSES:
        raise unknown_choice("loss", config.loss.name, objective.LOSSES)
    check_memory(config)
    optim.validate(config.optim)
    evaluate.knn_metric(config.eval.metric)
    selection(config)


SELECTION_SPLITS = ("", "val", "test")


class Selection(NamedTuple):
    """How a run picks the checkpoint it reports besides the final one (`config.selection`).

    split '' : no selection, the final step only (datasets with too few training classes, e.g. digits);
    split 'val': train on 'train_sub', evaluate the held-out training classes 'val' every `eval_every`
      steps and keep the checkpoint with the highest `val/<metric>` (the default of the image benchmarks);
    split 'test': the official codes' protocol, the best `test/<metric>` over evaluations; the test
      split then chooses the reported step, which biases it upwards: only for reproducing papers.
    """

    split: str
    metric: str

    @property
    def key(self) -> str:
        return f"{self.split}/{self.metric}" if self.split else ""

    @property
    def train_split(self) -> str:
        return "train_sub" if self.split == "val" else "train"


def selection(config: ml_collections.ConfigDict) -> Selection:
    """`config.selection` checked: split in SELECTION_SPLITS, metric a key the evaluation writes."""
    sel = config.get("selection") or ml_collections.ConfigDict({"split": "", "metric": "recall@1"})
    split, metric = str(sel.get("split", "")), str(sel.get("metric", "recall@1"))
    if split not in SELECTION_SPLITS:
        raise ConfigError(f"unknown selection.split {split!r}; valid: '' (final step only), 'val', 'test'")
    valid = [f"recall@{k}" for k in config.eval.ks] + ["precision@1", "r_precision", "map@r"]
    if metric not in valid:
        raise ConfigError(f"unknown selection.metric {metric!r}; valid: {', '.join(valid)}")
    return Selection(split, metric)


class _Preemption:
    """SIGTERM and SIGINT (Ctrl-C) as a step at which to checkpoint and exit with 128 + the signal number
    (143, 130), polled by the loop with `reached(step)`; a second SIGINT interrupts at once.

    One process: a Python handler sets a flag. N processes: JAX's preemption service (started by
    `jax.distributed.initialize`, listening for SIGTERM) passes a notice from any process to all and
    agrees on one step at which all of them stop (`multihost_utils.reached_preemption_sync_point`,
    called at every step), so their checkpoint collectives match; SIGINT keeps Python's default there.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signum = 0
        self._previous = {}
        self._multi = jax.process_count() > 1

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def __enter__(self):
        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested, self.signum = True, signum

        if self._multi:
            return self
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread
                pass
        return self

    def reached(self, step: int) -> bool:
        if self._multi and multihost_utils.reached_preemption_sync_point(step):
            self.requested, self.signum = True, signal.SIGTERM
        return self.requested

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _progress(total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not sys.stderr.isatty())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, allow_changes: Sequence[str] = ()) -> dict[str, float]:
    """Train `config` in `workdir` (resuming from its latest checkpoint) and return the final metrics.

    The workdir is one run (`probdml.workdir`): it is locked while in use, a config that differs from the
    recorded one is refused unless every changed field is in `allow_changes` and safe to change, and a
    finished run returns its recorded final metrics without training.

    Data parallel over `config.num_devices` devices (0 = all) with the global batch sharded along a
    1-D mesh. Process 0 writes the config (config.json), TensorBoard events and metrics.jsonl to <workdir> and the final
    evaluation to <workdir>/final_metrics.json; all processes take part in checkpointing
    (<workdir>/checkpoints).
    """
    parallel.initialize_distributed(config.get("distributed"))
    validate_config(config, workdir)
    mesh = parallel.make_mesh(config.get("num_devices", 0))
    parallel.check_batch_size(config.data.batch_size, mesh)
    parallel.check_batch_size(config.eval.batch_size, mesh, "eval batch size")
    lead = jax.process_index() == 0
    sel = selection(config)
    run = workdir_lib.open_run(config, workdir, allow_changes, jax.process_index(), jax.process_count())
    if run.finished is not None:
        writers.log(f"finished: {workdir} holds a finished run of {config.num_steps} steps; nothing to do")
        return run.finished
    parallel.lead_first(lambda: data.prepare(config.data), "prepare dataset")
    train_ds = data.load_split(config.data, sel.train_split)
    eval_sets = {"test": data.load_split(config.data, "test")}
    if sel.split == "val":
        eval_sets = {"val": data.load_split(config.data, "val"), **eval_sets}
    test_ds = eval_sets["test"]
    config_checks.check_data(config, train_ds, test_ds)
    setup = create_setup(config, mesh, train_ds.num_classes, train_ds.image_shape)
    model, state, train_step = setup.model, setup.state, setup.train_step

    mngr = checkpointing.manager(workdir, config.keep_checkpoints, sel.key)
    restored = checkpointing.restore_latest(mngr, state)
    if restored is not None:
        state = restored
        writers.log(f"resumed from checkpoint at step {int(state.step)}")
    start = int(state.step)

    @jax.jit
    def apply_eval(params, batch_stats, images):
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        return model.apply(variables, images, train=False)

    if restored is None and setup.objective.warm_start is not None:
        state = warm_start(setup, state, lambda x: apply_eval(state.params["model"], state.batch_stats, x),
                           config, train_ds, mesh)

    vmf = evaluate.vmf_embedding(config)

    def run_eval(state: TrainState, split: str) -> dict[str, float]:
        ds = eval_sets[split]
        outputs = evaluate.embed(
            lambda x: apply_eval(state.params["model"], state.batch_stats, x),
            config.data,
            ds,
            config.eval.batch_size,
            mesh,
        )
        return evaluate.evaluate_outputs(outputs, ds.labels, config.eval, mesh, vmf=vmf,
                                         severity=getattr(ds, "severity", None))

    run.record()
    writer = writers.MetricWriter(workdir, resume_step=start) if lead else None
    batches = data.pipeline.train_batches(
        config.data, train_ds, config.seed, start, jax.process_index(), jax.process_count()
    )
    num_steps = config.num_steps
    writers.log(
        f"training {config.loss.name} on {config.data.name}: {len(train_ds)} train images "
        f"({train_ds.num_classes} classes), {len(test_ds)} test images ({test_ds.num_classes} classes), "
        f"{mesh.devices.size} device(s), steps {start} -> {num_steps}"
    )
    bar = _progress(num_steps, start) if lead else None
    t0, last_step = time.perf_counter(), start
    eval_metrics: dict[str, float] = {}
    with _Preemption() as preemption:
        for step in range(start + 1, num_steps + 1):
            state, step_metrics = train_step(state, parallel.global_batch(mesh, next(batches)))
            if bar is not None:
                bar.update(1)
            if step % config.log_every == 0 or step == num_steps:
                scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                if not all(np.isfinite(v) for v in scalars.values()):
                    raise FloatingPointError(f"non-finite training metrics at step {step}: {scalars}")
                rate = (step - last_step) / max(time.perf_counter() - t0, 1e-9)
                t0, last_step = time.perf_counter(), step
                eta = (num_steps - step) / max(rate, 1e-9)
                if writer is not None:
                    writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()} | {"train/steps_per_sec": rate})
                writers.log(f"step {step}/{num_steps}  {writers.format_scalars(scalars)}  {rate:.1f} steps/s  ETA {eta:.0f}s")
            evaluated = step % config.eval_every == 0 or step == num_steps
            if evaluated:
                during = sel.split or "test"  # with val selection the test split waits for the end
                eval_metrics = {f"{during}/{k}": v for k, v in run_eval(state, during).items()}
                if writer is not None:
                    writer.write_scalars(step, eval_metrics)
                writers.log(f"eval step {step}  {writers.format_scalars(writers.console_metrics(eval_metrics))}")
            track_best = evaluated and bool(sel.key)
            preempted = preemption.reached(step)
            if step % config.checkpoint_every == 0 or step == num_steps or track_best or preempted:
                checkpointing.save(mngr, step, state, eval_metrics if evaluated else None)
            if preempted:
                mngr.wait_until_finished()
                if bar is not None:
                    bar.close()
                if writer is not None:
                    writer.close()
                writers.log(f"{preemption.name}: saved a checkpoint at step {step}; rerun the same command to resume")
                raise SystemExit(128 + preemption.signum)
    if bar is not None:
        bar.close()
    mngr.wait_until_finished()
    final_step = int(state.step)
    if eval_metrics and sel.split != "val":  # the last step's test evaluation
        final = {k.removeprefix("test/"): v for k, v in eval_metrics.items()}
    else:
        final = run_eval(state, "test")
    record: dict[str, Any] = {"step": final_step, "split": "test", **final}
    if sel.split:
        best = mngr.best_step()
        if best is None:
            raise RuntimeError(f"no checkpoint carries {sel.key}; was the run evaluated (eval_every)?")
        best_state = state if best == final_step else checkpointing.restore_step(mngr, best, state)
        picked = final if best == final_step else run_eval(best_state, "test")
        value = checkpointing.step_metrics(mngr, best)[sel.key]
        record["selection"] = {"split": sel.split, "metric": sel.key, "step": int(best), "value": value}
        record["selected"] = picked
    mngr.close()
    if writer is not None:
        if sel.split == "val":  # otherwise the loop already logged the last step's test evaluation
            writer.write_scalars(final_step, {f"test/{k}": v for k, v in final.items()})
        if sel.split:
            writer.write_scalars(final_step, {f"test@selected/{k}": v for k, v in record["selected"].items()})
        writer.close()
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump(record, f, indent=1)
    return record
