"""Orbax checkpoints of the training state.

Saves are asynchronous; the newest `keep` checkpoints are kept, plus the best one by a chosen
evaluation metric when `best_metric` is set. Restoring walks back from the latest checkpoint and
skips (with a warning) any that cannot be read, e.g. one corrupted or cut short by a crash.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


def manager(workdir: str, keep: int, best_metric: str = "") -> ocp.CheckpointManager:
    """A CheckpointManager writing `<workdir>/checkpoints/<step>`: the newest `keep` are kept, and
    with `best_metric` also the checkpoint with the highest value of that metric (`best_step()`)."""
    keep_policies = [policies.LatestN(n=keep)]
    if best_metric:
        keep_policies.append(
            policies.BestN(get_metric_fn=lambda m: m[best_metric], n=1, keep_checkpoints_without_metrics=False)
        )
    options = ocp.CheckpointManagerOptions(
        create=True,
        best_fn=(lambda m: m[best_metric]) if best_metric else None,
        best_mode="max",
        preservation_policy=policies.AnyPreservationPolicy(keep_policies),
        enable_async_checkpointing=True,
    )
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
    """Start saving `state` at `step` (with its evaluation `metrics`, if any, for keep-best)."""
    mngr.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)


def restore_latest(mngr: ocp.CheckpointManager, like: Any) -> Any | None:
    """The newest readable checkpoint, restored with the structure, shapes, dtypes and shardings of
    `like`; None when there is none. Unreadable checkpoints are skipped with a warning."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            warnings.warn(f"checkpoint at step {step} could not be restored ({type(e).__name__}: {e}); trying an older one")
    return None


def restore_step(mngr: ocp.CheckpointManager, step: int, like: Any) -> Any:
    """The checkpoint at `step`, restored with the structure, shapes, dtypes and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def step_metrics(mngr: ocp.CheckpointManager, step: int) -> dict[str, float]:
    """The evaluation metrics saved with the checkpoint at `step` ({} when it has none)."""
    return dict(mngr.metrics(step) or {})
