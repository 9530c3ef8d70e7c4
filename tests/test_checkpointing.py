"""Checkpoints: damaged ones are skipped with a warning; keep-last-K plus keep-best."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from probdml import checkpointing


def _state(v):
    return {"step": jnp.asarray(v, jnp.int32), "w": jnp.full((4, 3), float(v))}


def test_corrupted_latest_checkpoint_falls_back_with_warning(tmp_path):
    mngr = checkpointing.manager(str(tmp_path), keep=3)
    for step in (1, 2):
        checkpointing.save(mngr, step, _state(step))
    mngr.wait_until_finished()
    latest = tmp_path / "checkpoints" / "2"
    damaged = 0
    for root, _, files in os.walk(latest):
        for name in files:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 0 and "metadata" not in name:
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                damaged += 1
    assert damaged
    with pytest.warns(checkpointing.DamagedCheckpointWarning, match="checkpoint at step 2 is damaged"):
        mngr = checkpointing.manager(str(tmp_path), keep=3)
        restored = checkpointing.restore_latest(mngr, _state(0))
    assert int(restored["step"]) == 1
    np.testing.assert_array_equal(restored["w"], np.full((4, 3), 1.0))


def test_half_written_checkpoint_is_ignored(tmp_path):
    mngr = checkpointing.manager(str(tmp_path), keep=3)
    checkpointing.save(mngr, 1, _state(1))
    mngr.wait_until_finished()
    # What a crash during a save leaves: orbax's temporary directory for the next step.
    (tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-123").mkdir()
    mngr = checkpointing.manager(str(tmp_path), keep=3)
    assert int(checkpointing.restore_latest(mngr, _state(0))["step"]) == 1


def test_keep_last_k_plus_best(tmp_path):
    mngr = checkpointing.manager(str(tmp_path), keep=2, best_metric="test/recall@1")
    recalls = {1: 0.5, 2: 0.9, 3: 0.6, 4: None, 5: 0.7, 6: None}
    for step, r in recalls.items():
        checkpointing.save(mngr, step, _state(step), None if r is None else {"test/recall@1": r})
        mngr.wait_until_finished()
    assert sorted(mngr.all_steps()) == [2, 5, 6]  # best (2) + the newest two
    assert mngr.best_step() == 2
    mngr.close()


def test_empty_directory_restores_nothing(tmp_path):
    assert checkpointing.restore_latest(checkpointing.manager(str(tmp_path), keep=1), _state(0)) is None


def test_bit_flip_is_caught_moved_aside_and_the_step_saved_again(tmp_path):
    """Flipped bytes in a committed step fail its SHA-256 manifest (orbax alone would restore them): the
    step moves to checkpoints_damaged/, the older one is restored, and saving the step again succeeds."""
    mngr = checkpointing.manager(str(tmp_path), keep=3)
    for step in (1, 2):
        checkpointing.save(mngr, step, _state(step))
    mngr.wait_until_finished()
    step_dir = tmp_path / "checkpoints" / "2"
    assert checkpointing.verify_step(str(step_dir)) is None
    manifest = json.load(open(step_dir / checkpointing.MANIFEST))["sha256"]
    items = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.parent != step_dir)
    assert sorted(str(p.relative_to(step_dir)) for p in items) == sorted(manifest)
    data = max(items, key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    assert "fails its SHA-256 checksum" in checkpointing.verify_step(str(step_dir))
    with pytest.warns(checkpointing.DamagedCheckpointWarning, match="step 2 is damaged: file .* fails its SHA-256"):
        restored = checkpointing.restore_latest(mngr, _state(0))
    assert int(restored["step"]) == 1
    assert [p.name.split("-")[0] for p in (tmp_path / "checkpoints_damaged").iterdir()] == ["2"]
    checkpointing.save(mngr, 2, _state(7))
    mngr.wait_until_finished()
    fresh = checkpointing.manager(str(tmp_path), keep=3)
    np.testing.assert_array_equal(checkpointing.restore_latest(fresh, _state(0))["w"], np.full((4, 3), 7.0))
