"""Convert torchvision ResNet weights to Flax variables and load them into models.

Conversion (torch -> probdml, see `probdml.models.resnet` for the name map):

    conv weight [O, I, kh, kw]   ->  kernel [kh, kw, I, O]
    fc weight   [out, in]        ->  kernel [in, out]
    bn weight, bias              ->  params scale, bias
    bn running_mean, running_var ->  batch_stats mean, var  (num_batches_tracked dropped)

Input files are `.pth`/`.pt` state dicts, read with `torch.load(weights_only=True)` (no
arbitrary unpickling), or `.safetensors` files, read with the `safetensors` numpy API
(torch not needed). The output directory holds an orbax checkpoint of
{"params", "batch_stats"} under `variables/` and a `metadata.json` naming the
architecture. Command line:

    python -m probdml.models.convert --torch=resnet50.pth --out=DIR
        [--arch=resnet50]     (default: inferred from the keys)
        [--prefix=module.]    (strip a key prefix, e.g. from DataParallel checkpoints)

A config then points at DIR (`config.model.pretrained=DIR`); `load_pretrained(DIR)` reads
the variables and `merge_pretrained` copies them into freshly initialised model
variables, naming the first missing or mis-shaped parameter when they do not fit:

    variables = model.init(key, images)            # backbone submodule named "backbone"
    variables = merge_pretrained(variables, load_pretrained(config.model.pretrained),
                                 at="backbone")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from probdml.models.resnet import ARCHITECTURES, EXPANSION, STAGE_WIDTHS

FORMAT = "probdml-resnet"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
VARIABLES_DIR = "variables"
COLLECTIONS = ("params", "batch_stats")

_BN_SUFFIXES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def torch_state_shapes(arch: str, num_classes: int | None = 1000) -> dict[str, tuple[int, ...]]:
    """Expected torchvision state-dict keys and shapes, in state-dict order.

    `num_batches_tracked` buffers are omitted (they are optional and ignored); the `fc`
    entries are omitted when `num_classes` is None.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    stage_sizes, block = ARCHITECTURES[arch]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out: int, in_: int, k: int) -> None:
        shapes[f"{name}.weight"] = (out, in_, k, k)

    def bn(name: str, channels: int) -> None:
        for suffix in _BN_SUFFIXES:
            shapes[f"{name}.{suffix}"] = (channels,)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    in_ = 64
    for i, (blocks, width) in enumerate(zip(stage_sizes, STAGE_WIDTHS)):
        out = width * EXPANSION[block]
        for j in range(blocks):
            p = f"layer{i + 1}.{j}"
            if block == "basic":
                conv(f"{p}.conv1", width, in_, 3)
                bn(f"{p}.bn1", width)
                conv(f"{p}.conv2", width, width, 3)
                bn(f"{p}.bn2", width)
            else:
                conv(f"{p}.conv1", width, in_, 1)
                bn(f"{p}.bn1", width)
                conv(f"{p}.conv2", width, width, 3)
                bn(f"{p}.bn2", width)
                conv(f"{p}.conv3", out, width, 1)
                bn(f"{p}.bn3", out)
            stride = 2 if (i > 0 and j == 0) else 1
            if stride != 1 or in_ != out:
                conv(f"{p}.downsample.0", out, in_, 1)
                bn(f"{p}.downsample.1", out)
            in_ = out
    if num_classes is not None:
        shapes["fc.weight"] = (num_classes, in_)
        shapes["fc.bias"] = (num_classes,)
    return shapes


def infer_arch(keys: Iterable[str]) -> str:
    """Architecture name from torchvision state-dict keys (block counts, conv3 presence)."""
    keys = set(keys)
    counts = [0, 0, 0, 0]
    for key in keys:
        match = re.match(r"layer([1-4])\.(\d+)\.", key)
        if match:
            stage = int(match.group(1)) - 1
            counts[stage] = max(counts[stage], int(match.group(2)) + 1)
    block = "bottleneck" if "layer1.0.conv3.weight" in keys else "basic"
    for arch, (stage_sizes, arch_block) in ARCHITECTURES.items():
        if tuple(counts) == tuple(stage_sizes) and block == arch_block:
            return arch
    known = dict(ARCHITECTURES)
    raise ValueError(
        f"state dict does not match a known ResNet: {block} blocks per stage {tuple(counts)}; known: {known}"
    )


def flax_path(torch_key: str) -> tuple[str, ...]:
    """probdml variable path (collection first) of a torchvision state-dict key."""
    module, _, suffix = torch_key.rpartition(".")
    module = module.replace("downsample.0", "downsample_conv").replace("downsample.1", "downsample_bn")
    parts = module.split(".")
    if parts[0].startswith("layer"):
        parts = [f"{parts[0]}_{parts[1]}"] + parts[2:]
    if parts[-1] == "fc":
        return ("params", "fc", {"weight": "kernel", "bias": "bias"}[suffix])
    if suffix == "weight" and "conv" in parts[-1]:
        return ("params", *parts, "kernel")
    collection, leaf = _BN_SUFFIXES[suffix]
    return (collection, *parts, leaf)


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return np.ascontiguousarray(np.transpose(array, (2, 3, 1, 0)))
    if array.ndim == 2:
        return np.ascontiguousarray(array.T)
    return np.ascontiguousarray(array)


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray], arch: str | None = None, *, source: str = "state dict"
) -> tuple[dict[str, Any], str, int | None]:
    """torchvision ResNet state dict (numpy arrays) -> (Flax variables, arch, num_classes).

    Every expected key must be present with its torchvision shape; a missing, mis-shaped
    or unexpected key raises ValueError naming the first one (state-dict order). `fc` is
    optional (num_classes None when absent); `num_batches_tracked` is ignored. A
    Cadene `pretrainedmodels` head (`last_linear.*`) is read as `fc.*`.
    """
    state = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("last_linear."):
            key = "fc." + key[len("last_linear.") :]
        state[key] = np.asarray(value)
    if arch is None:
        arch = infer_arch(state)
    elif arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    num_classes = None
    if "fc.weight" in state or "fc.bias" in state:
        num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else int(state["fc.bias"].shape[0])
    expected = torch_state_shapes(arch, num_classes)
    for key, shape in expected.items():
        if key not in state:
            raise ValueError(f"{source}: missing parameter {key!r} (expected shape {shape} for {arch})")
        if tuple(state[key].shape) != shape:
            raise ValueError(
                f"{source}: parameter {key!r} has shape {tuple(state[key].shape)}, expected {shape} for {arch}"
            )
    for key in state:
        if key not in expected:
            raise ValueError(f"{source}: unexpected parameter {key!r} for {arch}")
    flat = {flax_path(k): _to_flax_layout(state[k].astype(np.float32)) for k in expected}
    return traverse_util.unflatten_dict(flat), arch, num_classes


def read_state_dict(path: str, prefix: str = "") -> dict[str, np.ndarray]:
    """Read a `.pth`/`.pt` (weights_only torch.load) or `.safetensors` file as numpy arrays.

    A `.pth` holding {"state_dict": {...}} (a training checkpoint) is unwrapped. Keys
    starting with `prefix` (e.g. "module.") have it stripped; other keys are kept.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        raw: Mapping[str, Any] = load_file(path)
    elif path.endswith((".pth", ".pt", ".bin")):
        import torch

        raw = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
            raw = raw["state_dict"]
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path}: expected a state dict (mapping of names to tensors), got {type(raw).__name__}")
        raw = {k: _torch_to_numpy(k, v, path) for k, v in raw.items()}
    else:
        raise ValueError(f"{path}: unsupported weight file; use .pth, .pt, .bin or .safetensors")
    return {(k[len(prefix) :] if prefix and k.startswith(prefix) else k): np.asarray(v) for k, v in raw.items()}


def _torch_to_numpy(key: str, value: Any, path: str) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    if value.is_floating_point():
        value = value.float()
    return value.numpy()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_pretrained(
    directory: str, variables: Mapping[str, Any], arch: str, num_classes: int | None, source: str = ""
) -> None:
    """Write {"params", "batch_stats"} as an orbax checkpoint plus metadata.json to `directory`."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    tree = {c: variables[c] for c in COLLECTIONS}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, VARIABLES_DIR), tree, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()
    metadata = {"format": FORMAT, "version": FORMAT_VERSION, "arch": arch, "num_classes": num_classes}
    if source:
        metadata["source"] = os.path.basename(source)
        metadata["sha256"] = _sha256(source)
    with open(os.path.join(directory, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)


def convert_file(path: str, out: str, arch: str | None = None, prefix: str = "") -> dict[str, Any]:
    """Convert a torchvision ResNet weight file to a probdml checkpoint directory; returns its metadata."""
    variables, arch, num_classes = convert_state_dict(read_state_dict(path, prefix), arch, source=path)
    save_pretrained(out, variables, arch, num_classes, source=path)
    return read_metadata(out)


def read_metadata(directory: str) -> dict[str, Any]:
    """metadata.json of a converted checkpoint directory (format, arch, num_classes, source)."""
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory} is not a converted checkpoint (no {METADATA_FILE}); "
            "create one with `python -m probdml.models.convert --torch=FILE --out=DIR`"
        )
    with open(path) as f:
        metadata = json.load(f)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    return metadata


def load_pretrained(directory: str, arch: str | None = None) -> dict[str, Any]:
    """Variables {"params", "batch_stats"} (numpy float32) of a converted checkpoint.

    When `arch` is given it must match the checkpoint's architecture.
    """
    import jax
    import orbax.checkpoint as ocp

    metadata = read_metadata(directory)
    if arch is not None and metadata["arch"] != arch:
        raise ValueError(f"{directory} holds {metadata['arch']} weights, but the model is {arch}")
    path = os.path.join(os.path.abspath(directory), VARIABLES_DIR)
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.metadata(path).item_metadata
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), stored)
        restored = checkpointer.restore(path, target)
    return jax.tree.map(np.asarray, dict(restored))


def merge_pretrained(
    variables: Mapping[str, Any],
    pretrained: Mapping[str, Any],
    at: str | Sequence[str] = (),
    allow_unused: Sequence[str] = ("fc",),
) -> dict[str, Any]:
    """Copy pretrained backbone variables into model variables, checking names and shapes.

    `variables` are a model's initialised variables ({"params", "batch_stats", ...});
    the backbone sits at the module path `at` inside each collection (e.g. "backbone" or
    ("encoder", "resnet"); () for a bare ResNet). Every backbone leaf must exist in
    `pretrained` with the same shape, else ValueError naming the first missing or
    mis-shaped one: "params" are checked before "batch_stats", paths in natural order
    (digit runs compare as numbers, so "layer3_9" precedes "layer3_10"). Pretrained
    entries that the backbone lacks are an error too (an architecture mismatch), except
    top-level modules in `allow_unused` (by default the ImageNet classifier `fc`).
    Leaves keep the model's dtypes; all other variables are returned unchanged.
    """
    at = (at,) if isinstance(at, str) else tuple(at)
    merged = {c: v for c, v in variables.items()}
    for collection in COLLECTIONS:
        if collection not in variables:
            continue
        subtree: Any = variables[collection]
        for name in at:
            if name not in subtree:
                raise ValueError(f"model variables have no module {'/'.join((collection, *at))!r}")
            subtree = subtree[name]
        source = traverse_util.flatten_dict(pretrained.get(collection, {}))
        target = traverse_util.flatten_dict(subtree)
        new = {}
        for path in sorted(target, key=_natural_key):
            leaf = target[path]
            name = "/".join((collection, *path))
            model_name = "/".join((collection, *at, *path))
            if path not in source:
                raise ValueError(f"pretrained checkpoint lacks parameter {name!r} (needed for {model_name!r})")
            value = source[path]
            if tuple(value.shape) != tuple(leaf.shape):
                raise ValueError(
                    f"pretrained parameter {name!r} has shape {tuple(value.shape)}, "
                    f"but the model's {model_name!r} has shape {tuple(leaf.shape)}"
                )
            new[path] = np.asarray(value).astype(leaf.dtype)
        for path in sorted(source, key=_natural_key):
            if path not in target and path[0] not in allow_unused:
                raise ValueError(
                    f"pretrained parameter {'/'.join((collection, *path))!r} has no place in the model "
                    f"(architecture mismatch?); allowed unused modules: {tuple(allow_unused)}"
                )
        merged[collection] = _replace_at(variables[collection], at, traverse_util.unflatten_dict(new))
    return merged


def _natural_key(path: tuple[str, ...]) -> tuple[tuple[Any, ...], ...]:
    """Sort key ordering "layer3_10" after "layer3_9" (digit runs compare as integers)."""
    return tuple(tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))) for p in path)


def _replace_at(tree: Mapping[str, Any], at: tuple[str, ...], value: Any) -> Any:
    if not at:
        return value
    out = dict(tree)
    out[at[0]] = _replace_at(tree[at[0]], at[1:], value)
    return out


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    metadata = convert_file(f.torch, f.out, arch=f.arch, prefix=f.prefix)
    print(json.dumps({"out": os.path.abspath(f.out), **metadata}, indent=2))


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("torch", None, "torchvision ResNet weights: .pth/.pt (weights_only) or .safetensors")
    flags.DEFINE_string("out", None, "output directory for the probdml checkpoint")
    flags.DEFINE_enum("arch", None, sorted(ARCHITECTURES), "architecture; inferred from the keys if unset")
    flags.DEFINE_string("prefix", "", "key prefix to strip, e.g. 'module.'")
    flags.mark_flags_as_required(["torch", "out"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
