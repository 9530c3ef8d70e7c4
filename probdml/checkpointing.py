"""Orbax checkpoints of the training state: save every N steps, keep the last K, resume the latest."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    """A CheckpointManager writing `<workdir>/checkpoints/<step>` and keeping the newest `keep`."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Save `state` at `step` (asynchronously; `mngr.wait_until_finished()` blocks until it is on disk)."""
    mngr.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(mngr: ocp.CheckpointManager, like: Any) -> Any | None:
    """The latest saved state with the structure, shapes and dtypes of `like`, or None if there is none."""
    step = mngr.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
