"""Orbax checkpoints of the training state, each verified by a checksum manifest.

Saves are asynchronous; the newest `keep` checkpoints are kept, plus the best one by a chosen
evaluation metric when `best_metric` is set.

Integrity. When orbax has finalised a step's files, and before it commits the step (the rename of its
temporary folder), process 0 writes `<step>/checksums.json`: the size and SHA-256 of every file of the
step's items. A committed step therefore always carries its manifest. Restoring walks back from the
newest step; a step whose files are missing, cut short or altered (or that orbax cannot read) is moved
to `<workdir>/checkpoints_damaged/<step>-<time>/` (kept for inspection) with a one-line
`DamagedCheckpointWarning`, and the next older step is tried, so a damaged checkpoint costs the steps
since the previous one and never a crash loop: later saves of those steps find no folder in the way.
Steps written before manifests existed (no checksums.json) are restored unverified.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

MANIFEST = "checksums.json"
DAMAGED_DIR = "checkpoints_damaged"


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint failed verification or could not be read, and was moved aside."""


class DamagedCheckpointError(RuntimeError):
    """A requested checkpoint failed verification."""


def _item_files(step_dir: str) -> list[str]:
    """Paths, relative to the step folder, of the files inside its item folders (step-level metadata that
    orbax updates at commit, e.g. _CHECKPOINT_METADATA, is not part of the manifest)."""
    out = []
    for root, _, files in os.walk(step_dir):
        if root == step_dir:
            continue
        out.extend(os.path.relpath(os.path.join(root, f), step_dir) for f in files)
    return sorted(out)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(step_dir: str) -> None:
    """Write `<step_dir>/checksums.json` = {"sha256": {relative path: [size, digest]}} of the item files."""
    files = {rel: [os.path.getsize(os.path.join(step_dir, rel)), _sha256(os.path.join(step_dir, rel))]
             for rel in _item_files(step_dir)}
    tmp = os.path.join(step_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"sha256": files}, f)
    os.replace(tmp, os.path.join(step_dir, MANIFEST))


def verify_step(step_dir: str, under: str = "") -> str | None:
    """None if every file of the manifest (under the folder `under`, if given) is there with its size and
    SHA-256, or there is no manifest (a step saved before manifests existed); else a short reason."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        return None if os.path.isdir(step_dir) else "missing"
    try:
        with open(path) as f:
            files = json.load(f)["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable {MANIFEST}"
    if not files:
        return f"empty {MANIFEST}"
    for rel, (size, digest) in sorted(files.items()):
        if under and not rel.startswith(under + os.sep):
            continue
        full = os.path.join(step_dir, rel)
        if not os.path.isfile(full):
            return f"file {rel} is missing"
        actual = os.path.getsize(full)
        if actual != size:
            return f"file {rel} has {actual} bytes, expected {size}"
        if _sha256(full) != digest:
            return f"file {rel} fails its SHA-256 checksum"
    return None


class VerifiedCheckpointManager(ocp.CheckpointManager):
    """An orbax CheckpointManager whose saves write the checksum manifest before the commit."""

    def __init__(self, directory: str, options: ocp.CheckpointManagerOptions):
        self._pending_step: int | None = None
        options.async_options = ocp.AsyncOptions(post_finalization_callback=self._seal)
        super().__init__(directory, options=options)

    def _seal(self) -> None:
        # Runs in orbax's background thread after every process's files are finalised, before the rename.
        if self._pending_step is None or jax.process_index() != 0:
            return
        candidates = glob.glob(os.path.join(str(self.directory), f"{self._pending_step}.orbax-checkpoint-tmp*"))
        final = os.path.join(str(self.directory), str(self._pending_step))
        for step_dir in candidates or ([final] if os.path.isdir(final) else []):
            write_manifest(step_dir)

    def save(self, step: int, *args, **kwargs) -> bool:
        self.wait_until_finished()
        self._pending_step = step
        return super().save(step, *args, **kwargs)


def _screen(directory: str) -> None:
    """Move aside the steps whose small files orbax reads when a manager opens (step metadata, the metrics
    item) are damaged, so that opening never fails; the full verification is left to restoring.

    Process 0 screens; with several processes every one of them then meets at one barrier, whether or not
    the folder exists yet (an early return on one process only would pair its next barrier with this one)."""
    if jax.process_index() == 0 and os.path.isdir(directory):
        _screen_steps(directory)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("probdml-checkpoint-screen")


def _screen_steps(directory: str) -> None:
    """The screening of `_screen`, on one process."""
    for name in sorted(os.listdir(directory), key=lambda n: (len(n), n)):
        step_dir = os.path.join(directory, name)
        if not (name.isdigit() and os.path.isdir(step_dir)):
            continue
        reason = verify_step(step_dir, under="metrics")
        metadata = os.path.join(step_dir, "_CHECKPOINT_METADATA")
        if reason is None and os.path.exists(metadata):
            try:
                with open(metadata) as f:
                    json.load(f)
            except (OSError, ValueError):
                reason = "unreadable _CHECKPOINT_METADATA"
        if reason is not None:
            target = move_aside(directory, int(name))
            warnings.warn(f"checkpoint at step {name} is damaged: {reason}; moved to {target}", DamagedCheckpointWarning)


def manager(workdir: str, keep: int, best_metric: str = "") -> VerifiedCheckpointManager:
    """A checkpoint manager writing `<workdir>/checkpoints/<step>`: the newest `keep` are kept, and
    with `best_metric` also the checkpoint with the highest value of that metric (`best_step()`).
    Steps whose metadata is damaged are moved aside first (`_screen`)."""
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
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    _screen(directory)
    return VerifiedCheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
    """Start saving `state` at `step` (with its evaluation `metrics`, if any, for keep-best)."""
    mngr.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def move_aside(directory: str, step: int) -> str:
    """Move the folder of `step` in the checkpoint `directory` (<workdir>/checkpoints) to
    <workdir>/checkpoints_damaged/<step>-<time>[-n]; returns the new path."""
    target_root = os.path.join(os.path.dirname(directory), DAMAGED_DIR)
    os.makedirs(target_root, exist_ok=True)
    base = os.path.join(target_root, f"{step}-{time.strftime('%Y%m%dT%H%M%S')}")
    target, n = base, 1
    while os.path.exists(target):
        target, n = f"{base}-{n}", n + 1
    os.rename(os.path.join(directory, str(step)), target)
    return target


def _without_empty_loss_state(abstract: Any) -> dict | None:
    """The fields of a train state without its empty `loss_state`: the structure of checkpoints written before
    the train state carried a loss state (the cross-batch memory), which restore into an empty one."""
    if not dataclasses.is_dataclass(abstract) or getattr(abstract, "loss_state", None) != {}:
        return None
    return {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract) if f.name != "loss_state"}


def restore_step(mngr: ocp.CheckpointManager, step: int, like: Any) -> Any:
    """Checkpoint `step`, verified, restored with the structure, shapes, dtypes and shardings of `like`;
    DamagedCheckpointError (one line) when its files fail verification or orbax cannot read them."""
    reason = verify_step(os.path.join(str(mngr.directory), str(step)))
    if reason is None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            reason = _one_line(e)
            legacy = _without_empty_loss_state(abstract)
            if legacy is not None:
                try:
                    return like.replace(**mngr.restore(step, args=ocp.args.StandardRestore(legacy)))
                except Exception:
                    pass
    raise DamagedCheckpointError(f"checkpoint at step {step} is damaged: {reason}")


def restore_latest(mngr: ocp.CheckpointManager, like: Any) -> Any | None:
    """The newest checkpoint that verifies and restores (see `restore_step`); None when there is none.
    Every newer one is moved aside with a one-line DamagedCheckpointWarning."""
    moved = False
    try:
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                return restore_step(mngr, step, like)
            except DamagedCheckpointError as e:
                if jax.process_index() == 0:
                    target = move_aside(str(mngr.directory), step)
                    moved = True
                    warnings.warn(f"{e}; moved to {target}; falling back to an older one", DamagedCheckpointWarning)
        return None
    finally:
        if moved or jax.process_count() > 1:
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("probdml-checkpoint-restore")
            mngr.reload()


def step_metrics(mngr: ocp.CheckpointManager, step: int) -> dict[str, float]:
    """The evaluation metrics saved with the checkpoint at `step` ({} when it has none)."""
    return dict(mngr.metrics(step) or {})
