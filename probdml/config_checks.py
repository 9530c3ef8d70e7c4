"""Validation of a training config before any work, and one-line messages for bad command lines.

`check_config(config)` checks every numeric and structural field a run reads, without importing JAX
or touching a file, so a bad value fails in about a second instead of tens of seconds into a run:

  sizes and frequencies      num_steps, log_every, eval_every, checkpoint_every, keep_checkpoints,
                             data.batch_size, eval.batch_size, model.embed_dim, ... : integers >= 1
  learning rates, factors    optim.learning_rate finite > 0, weight decay and multipliers finite >= 0
  every float of the config  finite (a NaN or inf anywhere is an error)
  batch / sampler            batch_size a multiple of samples_per_class for the class-balanced samplers;
                             'm_per_class' needs samples_per_class * (training classes) >= batch_size
  devices and processes      batch sizes divisible by num_devices (when set) and distributed.num_processes
  retrieval                  every k of eval.ks below the number of test examples

The dataset-dependent checks use `KNOWN_SPLITS` for the datasets whose splits are fixed; for the others
`check_data(config, train, test)` repeats them on the loaded splits. Every failure is a `ConfigError`
naming the field (`config field data.batch_size must be an integer >= 1, got 0`).

`flag_error_message(error, argv)` turns what absl / ml_collections raise for a bad command line into one
line: an unknown `--config.foo` lists the valid fields with a "did you mean", a config variant's own
error is passed through, a missing config file is named.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import numbers
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from probdml.errors import ConfigError

# (examples, classes) of the fixed class-disjoint splits, from the builders' documentation
# (probdml.data.<name>); glyphs depends on its builder options and is checked after loading.
KNOWN_SPLITS: dict[str, dict[str, tuple[int, int]]] = {
    "digits": {"train": (901, 5), "test": (896, 5)},
    "cub200": {"train": (5864, 100), "test": (5924, 100)},
    "cars196": {"train": (8054, 98), "test": (8131, 98)},
    "sop": {"train": (59551, 11318), "test": (60502, 11316)},
}

CLASS_BALANCED_SAMPLERS = ("m_per_class", "class_random")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _real(low: float, strict: bool) -> tuple[Callable[[Any], bool], str]:
    test = (lambda v: v > low) if strict else (lambda v: v >= low)
    return (lambda v: _is_real(v) and math.isfinite(v) and test(v)), f"a finite number {'>' if strict else '>='} {low:g}"


def _ints_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    def ok(v):
        return isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(x) and x >= low for x in v)

    return ok, f"a non-empty sequence of integers >= {low}"


def _reals(strict: bool) -> tuple[Callable[[Any], bool], str]:
    one, desc = _real(0.0, strict)

    def ok(v):
        return one(v) or (isinstance(v, (list, tuple)) and len(v) > 0 and all(one(x) for x in v))

    return ok, f"{desc} or a sequence of them"


def _fraction_range() -> tuple[Callable[[Any], bool], str]:
    def ok(v):
        return (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_real(x) for x in v)
                and 0.0 < v[0] <= v[1] <= 1.0)

    return ok, "a pair (low, high) with 0 < low <= high <= 1"


def _positive_range() -> tuple[Callable[[Any], bool], str]:
    def ok(v):
        return (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_real(x) and math.isfinite(x) for x in v)
                and 0.0 < v[0] <= v[1])

    return ok, "a pair (low, high) with 0 < low <= high"


def _open_unit() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_real(v) and 0.0 < v < 1.0), "a number in (0, 1)"


# Field (dotted path; '*' = every entry of a dict) -> (predicate, description). Absent fields are skipped.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": _int_at_least(0),
    "num_steps": _int_at_least(1),
    "log_every": _int_at_least(1),
    "eval_every": _int_at_least(1),
    "checkpoint_every": _int_at_least(1),
    "keep_checkpoints": _int_at_least(1),
    "num_devices": _int_at_least(0),
    "distributed.num_processes": _int_at_least(1),
    "distributed.process_id": _int_at_least(0),
    "data.batch_size": _int_at_least(1),
    "data.samples_per_class": _int_at_least(1),
    "data.image_size": _int_at_least(1),
    "data.resize_size": _int_at_least(1),
    "data.prefetch": _int_at_least(0),
    "data.mean": _reals(strict=False),
    "data.std": _reals(strict=True),
    "data.crop_scale": _fraction_range(),
    "data.crop_ratio": _positive_range(),
    "data.val_fraction": _open_unit(),
    "eval.batch_size": _int_at_least(1),
    "eval.ks": _ints_at_least(1),
    "model.embed_dim": _int_at_least(1),
    "model.hidden": _int_at_least(1),
    "model.widths": _ints_at_least(1),
    "model.uncertainty_dim": _int_at_least(0),
    "model.groups": _int_at_least(1),
    "model.blocks_per_stage": _int_at_least(1),
    "model.init_norm_multiplier": _real(0.0, strict=True),
    "optim.learning_rate": _real(0.0, strict=True),
    "optim.weight_decay": _real(0.0, strict=False),
    "optim.grad_clip_value": _real(0.0, strict=False),
    "optim.lr_mults.*": _real(0.0, strict=False),
    "optim.weight_decay_mults.*": _real(0.0, strict=False),
    "optim.frozen_until.*": _int_at_least(0),
    "optim.max_consecutive_nonfinite": _int_at_least(1),
    "loss.memory_size": _int_at_least(0),
    "loss.alpha": _real(0.0, strict=True),
    "loss.temperature": _real(0.0, strict=True),
    "loss.proxy_concentration": _real(0.0, strict=True),
    "loss.kappa_min": _real(0.0, strict=False),
    "loss.guidance_weight": _real(0.0, strict=False),
    "loss.similarity_options.tau": _real(0.0, strict=True),
    "loss.similarity_options.num_samples": _int_at_least(1),
    "mixup.alpha": _real(0.0, strict=True),
    "mixup.clean_weight": _real(0.0, strict=False),
}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b.c': leaf} of a (nested) ConfigDict or dict; a dict-valued field with no entries is a leaf {}."""
    items = tree.items() if hasattr(tree, "items") else []
    out: dict[str, Any] = {}
    for key, value in items:
        path = f"{prefix}{key}"
        if hasattr(value, "items") and len(value):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


def _fail(path: str, description: str, value: Any) -> ConfigError:
    return ConfigError(f"config field {path} must be {description}, got {value!r}")


def _matches(rule: str, path: str) -> bool:
    if rule.endswith(".*"):
        return path.startswith(rule[:-1]) and "." not in path[len(rule) - 1:]
    return rule == path


def _non_finite(value: Any) -> bool:
    if _is_real(value):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


def check_config(config: Any) -> None:
    """Raise a ConfigError naming the first bad field of `config` (rules: module docstring).

    Pure Python over the config values: no dataset, device or file is touched."""
    fields = flatten(config)
    for path, value in fields.items():
        for rule, (ok, description) in RULES.items():
            if _matches(rule, path) and not ok(value):
                raise _fail(path, description, value)
        if _non_finite(value):
            raise _fail(path, "finite", value)
    _check_schedule(fields)
    _check_sampler(fields)
    _check_parallel(fields)
    known = KNOWN_SPLITS.get(fields.get("data.name", ""))
    if known is not None:
        _check_sizes(fields, train=known["train"], test=known["test"])


def _check_schedule(fields: dict[str, Any]) -> None:
    schedule = fields.get("optim.schedule", "constant")
    if schedule == "cosine":
        ok, description = _int_at_least(1)
        if not ok(fields.get("optim.decay_steps")):
            raise _fail("optim.decay_steps", description + " (optim.schedule='cosine')", fields.get("optim.decay_steps"))
    if schedule == "step":
        boundaries = fields.get("optim.boundaries", ())
        ok, description = _ints_at_least(1)
        if not ok(boundaries) or list(boundaries) != sorted(set(boundaries)):
            raise _fail("optim.boundaries", "strictly increasing integers >= 1 (optim.schedule='step')", boundaries)
        ok, description = _real(0.0, strict=True)
        if not ok(fields.get("optim.gamma")):
            raise _fail("optim.gamma", description + " (optim.schedule='step')", fields.get("optim.gamma"))


def _check_sampler(fields: dict[str, Any]) -> None:
    sampler = fields.get("data.sampler", "random")
    batch, m = fields.get("data.batch_size"), fields.get("data.samples_per_class")
    if sampler in CLASS_BALANCED_SAMPLERS and batch % m:
        raise ConfigError(
            f"config field data.batch_size {batch} must be a multiple of data.samples_per_class {m} "
            f"(data.sampler={sampler!r})"
        )


def _check_parallel(fields: dict[str, Any]) -> None:
    divisors = []
    if fields.get("num_devices", 0):
        divisors.append(("num_devices", fields["num_devices"]))
    if fields.get("distributed.enabled", False) and fields.get("distributed.coordinator_address"):
        n = fields.get("distributed.num_processes", 1)
        if fields.get("distributed.process_id", 0) >= n:
            raise _fail("distributed.process_id", f"below distributed.num_processes ({n})",
                        fields.get("distributed.process_id"))
        divisors.append(("distributed.num_processes", n))
    for name, n in divisors:
        for field in ("data.batch_size", "eval.batch_size"):
            if field in fields and fields[field] % n:
                raise ConfigError(f"config field {field} {fields[field]} must be divisible by {name} {n}")


def _check_sizes(fields: dict[str, Any], train: tuple[int, int], test: tuple[int, int]) -> None:
    """Checks against (examples, classes) of the training and test splits."""
    batch, m = fields.get("data.batch_size"), fields.get("data.samples_per_class")
    sampler = fields.get("data.sampler", "random")
    name = fields.get("data.name")
    if sampler == "random" and batch > train[0]:
        raise ConfigError(
            f"config field data.batch_size {batch} exceeds the {train[0]} training examples of {name!r}"
        )
    if sampler == "m_per_class" and m * train[1] < batch:
        raise ConfigError(
            f"config field data.batch_size {batch} cannot be formed by data.sampler='m_per_class': "
            f"data.samples_per_class {m} x {train[1]} training classes of {name!r} = {m * train[1]} < {batch}; "
            f"use a smaller batch, a larger samples_per_class, or data.sampler='class_random'"
        )
    ks = fields.get("eval.ks", ())
    if ks and max(ks) > test[0] - 1:
        raise ConfigError(
            f"config field eval.ks has k={max(ks)} but the {test[0]} test examples of {name!r} have at most "
            f"{test[0] - 1} neighbours each"
        )


def check_data(config: Any, train: Any, test: Any) -> None:
    """The dataset-dependent checks of `check_config` on loaded splits (anything with `labels` [N])."""
    import numpy as np

    fields = flatten(config)
    _check_sizes(fields, train=(len(train.labels), len(np.unique(train.labels))),
                 test=(len(test.labels), len(np.unique(test.labels))))


# --- command-line errors -----------------------------------------------------------------------------


def config_argument(argv: Sequence[str]) -> str | None:
    """The value of --config (path[:variant...]) in `argv`, or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def overrides(argv: Sequence[str]) -> list[str]:
    """Dotted field paths of the --config.<path>=VALUE (or --config.<path> VALUE) overrides in `argv`."""
    paths = []
    for arg in argv:
        m = re.match(r"--(?:no)?config\.([^=\s]+)", arg)
        if m:
            paths.append(m.group(1))
    return paths


def load_config_file(spec: str) -> Any:
    """`get_config(*variant)` of the config file `spec` = 'path[:arg[:arg...]]', as ml_collections loads it."""
    path, *args = spec.split(":")
    module_spec = importlib.util.spec_from_file_location("probdml_cli_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*args)


def unknown_field_message(config: Any, path: str) -> str | None:
    """'unknown config field ...; valid fields of <parent>: ...; did you mean ...?' when the dotted `path` is
    not a field of `config`; None when it is."""
    node, walked = config, []
    for key in path.split("."):
        if not hasattr(node, "keys"):
            return None
        if key not in node:
            valid = sorted(node.keys())
            where = ".".join(walked) or "the config"
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"; did you mean {'.'.join([*walked, close[0]])!r}?" if close else ""
            return f"unknown config field {path!r}: {where} has no field {key!r}; valid fields: {', '.join(valid)}{hint}"
        node = node[key]
        walked.append(key)
    return None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def flag_error_message(error: BaseException, argv: Sequence[str]) -> str:
    """One line for an error raised while absl parses `argv` (see module docstring)."""
    text = str(error)
    if "Error whilst parsing config file" in text:
        # ml_collections wraps the config's own exception in a traceback: its last line is that exception.
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        message = re.sub(r"^[A-Za-z_][\w.]*(Error|Exception): ", "", lines[-1])
        return f"--config={config_argument(argv)}: {message}"
    spec = config_argument(argv)
    paths = overrides(argv)
    if spec is not None and paths:
        try:
            config = load_config_file(spec)
        except Exception:  # the file itself is broken: fall back to absl's own message
            config = None
        if config is not None:
            for path in paths:
                message = unknown_field_message(config, path)
                if message:
                    return message
    return _first_line(text.strip("'\"")) or type(error).__name__


def missing_config_file(argv: Sequence[str]) -> str | None:
    """'config file not found: PATH' when --config names no file; None otherwise."""
    spec = config_argument(argv)
    if spec is None:
        return None
    path = spec.split(":", 1)[0]
    if not os.path.isfile(path):
        return f"config file not found: {path} (--config=PATH[:variant], e.g. --config=configs/digits.py)"
    return None
