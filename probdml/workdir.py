"""A workdir is one run: its recorded config, a lock, and logs that hold every step once.

Identity. The first start of a workdir records the config in `<workdir>/config.json`; it is never
rewritten. A later start compares the requested config with the recorded one (plus the changes accepted
since, `<workdir>/config_changes.jsonl`) and refuses any difference, naming the changed fields, unless
every changed field is listed in `allow_changes` (CLI: `--allow_changes=num_steps,eval_every`) and is one
of `SAFE_CHANGES`, the fields that do not change what the trained model is:

  num_steps                            (only upwards: extends a run)
  log_every, eval_every, checkpoint_every, keep_checkpoints
  data.data_dir, data.manual_dir, data.download

Accepted changes are appended to config_changes.jsonl ({"time", "changes": {field: [old, new]}}).
`IGNORED_FIELDS` (per-process values of a multi-process run) are not compared. A start on a workdir whose
`final_metrics.json` is at the requested num_steps is "finished": nothing is trained or rewritten.

Lock. `<workdir>/lock` is held with `fcntl.flock` for the life of the run and names its holder
(pid, host, start time); a second start exits at once naming it. The kernel drops the lock when its
process dies, so a killed run never blocks a rerun. In a multi-process run (jax.distributed) process 0
takes the lock and does the checks; the others wait for its verdict, so the N processes of one run
share it.

Logs. `truncate_logs(workdir, step)` drops `metrics.jsonl` rows and TensorBoard events after `step`
(the restored checkpoint) so a resumed run writes each step once.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import json
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

from probdml.config_checks import flatten
from probdml.errors import ConfigError
from probdml.writers import final_line  # noqa: F401  (the closing line of a run, re-exported)

SAFE_CHANGES = (
    "num_steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "data.data_dir",
    "data.manual_dir",
    "data.download",
)
IGNORED_FIELDS = ("distributed.process_id", "distributed.coordinator_address")
CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
FINAL_FILE = "final_metrics.json"
LOCK_FILE = "lock"
METRICS_FILE = "metrics.jsonl"

# Locks held by this process: abspath -> file descriptor (re-entrant within one process, e.g. tests
# calling train_and_evaluate several times on one workdir).
_HELD: dict[str, int] = {}
_CREATED: set[str] = set()  # workdirs this process created: removed at exit if left empty


def config_record(config: Any) -> dict[str, Any]:
    """The config as recorded in config.json: `to_json_best_effort` read back, so tuples are lists and
    field references are resolved to values."""
    return json.loads(config.to_json_best_effort())


def _unflatten_set(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def recorded_config(workdir: str) -> dict[str, Any] | None:
    """config.json with the accepted changes of config_changes.jsonl applied; None for a new workdir."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    changes_path = os.path.join(workdir, CHANGES_FILE)
    if os.path.exists(changes_path):
        with open(changes_path) as f:
            for line in f:
                if line.strip():
                    for field, (_, new) in json.loads(line)["changes"].items():
                        _unflatten_set(record, field, new)
    return record


def config_diff(recorded: dict[str, Any], requested: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (recorded value, requested value)} for every dotted field that differs (absent = None)."""
    old, new = flatten(recorded), flatten(requested)
    return {
        k: (old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if k not in IGNORED_FIELDS and old.get(k) != new.get(k)
    }


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_changes(diff: dict[str, tuple[Any, Any]], allow_changes: Iterable[str], workdir: str) -> None:
    """ConfigError unless every changed field is allowed (listed in `allow_changes`, and safe)."""
    allowed = [f.strip() for f in allow_changes if f.strip()]
    unsafe = sorted(set(allowed) - set(SAFE_CHANGES))
    if unsafe:
        raise ConfigError(
            f"--allow_changes names {', '.join(unsafe)}, which changes the trained model; safe fields: "
            f"{', '.join(SAFE_CHANGES)}"
        )
    refused = [k for k in diff if k not in allowed]
    if refused:
        changes = ", ".join(f"{k} {_short(diff[k][0])} -> {_short(diff[k][1])}" for k in refused)
        safe = [k for k in refused if k in SAFE_CHANGES]
        way_out = (f"rerun with --allow_changes={','.join(safe)} to accept" if len(safe) == len(refused)
                   else "use a new --workdir (or the recorded values)")
        raise ConfigError(f"workdir {workdir} holds a run with a different config: {changes}; {way_out}")
    old_steps, new_steps = diff.get("num_steps", (0, 0))
    if "num_steps" in diff and isinstance(old_steps, int) and isinstance(new_steps, int) and new_steps < old_steps:
        raise ConfigError(
            f"num_steps can only grow in an existing workdir ({old_steps} -> {new_steps}); use a new --workdir"
        )


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            info = json.load(f)
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "another process"


def acquire_lock(workdir: str) -> None:
    """Hold `<workdir>/lock` (flock) until this process exits; ConfigError naming the holder if it is taken."""
    key = os.path.abspath(workdir)
    if key in _HELD:
        return
    path = os.path.join(workdir, LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"workdir {workdir} is in use by {_holder(path)}; wait for it to finish, stop it, or use another --workdir"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed the file between our open and flock: lock the new one
            break
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    _HELD[key] = fd


def release_lock(workdir: str) -> None:
    """Remove and unlock `<workdir>/lock` if this process holds it."""
    fd = _HELD.pop(os.path.abspath(workdir), None)
    if fd is None:
        return
    try:
        os.unlink(os.path.join(workdir, LOCK_FILE))
    except FileNotFoundError:
        pass
    os.close(fd)


def _release_all() -> None:
    for key in list(_HELD):
        release_lock(key)
    for path in _CREATED:
        try:
            os.rmdir(path)
        except OSError:
            pass


atexit.register(_release_all)


def final_metrics(workdir: str) -> dict[str, Any] | None:
    """final_metrics.json of `workdir`, or None."""
    path = os.path.join(workdir, FINAL_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


class Run:
    """The outcome of `open_run`: whether the workdir is finished (with its final metrics), and
    `record()`, which writes the config (or the accepted changes) once training is about to start."""

    def __init__(self, workdir: str, record: dict[str, Any], diff: dict, created: bool, lead: bool,
                 finished: dict[str, Any] | None):
        self.workdir = workdir
        self.finished = finished
        self._record, self._diff, self._created, self._lead = record, diff, created, lead

    def record(self) -> None:
        """Write config.json (new workdir) or append the accepted changes to config_changes.jsonl."""
        if not self._lead:
            return
        path = os.path.join(self.workdir, CONFIG_FILE)
        if not os.path.exists(path):
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self._record, f, indent=1)
            os.replace(tmp, path)
        elif self._diff:
            entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": {k: list(v) for k, v in self._diff.items()}}
            with open(os.path.join(self.workdir, CHANGES_FILE), "a") as f:
                f.write(json.dumps(entry) + "\n")
        self._diff = {}

    def abandon(self) -> None:
        """Release the lock and, on a workdir this start created, remove the lock file and the folder."""
        if not self._lead:
            return
        release_lock(self.workdir)
        if self._created:
            try:
                os.rmdir(self.workdir)
            except OSError:
                pass


def _check(config: Any, workdir: str, allow_changes: Iterable[str]) -> tuple[dict, dict, dict | None]:
    requested = config_record(config)
    recorded = recorded_config(workdir)
    diff = {} if recorded is None else config_diff(recorded, requested)
    check_changes(diff, allow_changes, workdir)
    final = final_metrics(workdir) if recorded is not None else None
    finished = final if final is not None and final.get("step") == requested.get("num_steps") else None
    return requested, diff, finished


def open_run(config: Any, workdir: str, allow_changes: Iterable[str] = (), process_index: int = 0,
             process_count: int = 1) -> Run:
    """Lock `workdir` and check `config` against the run it holds (module docstring); ConfigError on a
    refusal. Nothing is written but the lock (and the folder, if new) until `Run.record()`.

    With several processes, process 0 decides and the others follow its verdict (a collective call)."""
    lead = process_index == 0
    verdict, message, requested, diff, finished, created = 0, "", {}, {}, None, False
    if lead:
        try:
            created = not os.path.isdir(workdir)
            os.makedirs(workdir, exist_ok=True)
            if created:
                _CREATED.add(os.path.abspath(workdir))
            acquire_lock(workdir)
            requested, diff, finished = _check(config, workdir, allow_changes)
        except ConfigError as e:
            verdict, message = 1, str(e)
            Run(workdir, {}, {}, created, lead, None).abandon()
    if process_count > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        flags = multihost_utils.broadcast_one_to_all(np.asarray([verdict, finished is not None], np.int32))
        if not lead:
            if int(flags[0]):
                raise ConfigError(f"process 0 refused workdir {workdir} (see its error)")
            if int(flags[1]):
                finished = final_metrics(workdir) or {}
    if verdict:
        raise ConfigError(message)
    return Run(workdir, requested, diff, created, lead, finished)


def truncate_logs(workdir: str, step: int) -> None:
    """Drop what a previous start logged after `step`: metrics.jsonl rows with a larger 'step', and
    TensorBoard events with a larger step (each event file rewritten without them)."""
    path = os.path.join(workdir, METRICS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            lines = f.readlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:  # a row cut short by a kill
                continue
            if int(row.get("step", 0)) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, path)
    for events in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        _truncate_event_file(events, step)


def read_events(path: str) -> list[Any]:
    """The Event protos of a TensorBoard event file, up to the first damaged record."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    events = []
    try:
        for record in tf.data.TFRecordDataset(path):
            events.append(event_pb2.Event.FromString(record.numpy()))
    except tf.errors.DataLossError:
        pass
    return events


def _truncate_event_file(path: str, step: int) -> None:
    import tensorflow as tf

    events = read_events(path)
    kept = [e for e in events if e.step <= step]
    if len(kept) == len(events) and os.path.getsize(path) == sum(len(e.SerializeToString()) + 16 for e in events):
        return
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with tf.io.TFRecordWriter(tmp) as writer:
        for event in kept:
            writer.write(event.SerializeToString())
    os.replace(tmp, path)
