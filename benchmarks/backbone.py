"""ResNet training-step throughput: probdml (Flax/XLA) against PyTorch in the same process.

One step = forward + backward of mean softmax cross-entropy over random labels, BatchNorm
in training mode (batch statistics, running averages updated) unless --frozen_bn. Printed
figure: images per second = batch / (median seconds per step) over --iters timed rounds
in which the implementations alternate step by step (after --warmup untimed rounds; the
Flax compile time is printed separately). References: the
torchvision-identical PyTorch ResNet in tests/torch_resnet.py and, when installed,
torchvision itself.

    python benchmarks/backbone.py --iters=3            # ResNet-50, batch 32, 224x224
    python benchmarks/backbone.py --arch=resnet18 --batch=8 --size=160 --iters=10
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from torch_resnet import torch_resnet  # noqa: E402

from probdml.models import resnet  # noqa: E402
from probdml.models.convert import convert_state_dict  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("arch", "resnet50", sorted(resnet.ARCHITECTURES), "architecture")
flags.DEFINE_integer("batch", 32, "images per step")
flags.DEFINE_integer("size", 224, "image height and width")
flags.DEFINE_integer("iters", 3, "timed rounds (one step of each implementation per round)")
flags.DEFINE_integer("warmup", 1, "untimed rounds before timing (after compilation)")
flags.DEFINE_bool("frozen_bn", False, "BatchNorm with running statistics (torch: BN modules in eval mode)")

NUM_CLASSES = 1000


def time_interleaved(steps: dict[str, Callable[[], None]], iters: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each blocking `step`, timed in alternating rounds.

    Alternating the implementations step by step exposes them to the same machine load,
    so their ratio stays meaningful on a shared machine.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def flax_step_fn(arch: str, variables: dict, images: np.ndarray, labels: np.ndarray, frozen_bn: bool):
    model = resnet.resnet(arch, num_classes=NUM_CLASSES, frozen_bn_stats=frozen_bn)

    @jax.jit
    def step(params, batch_stats, x, y):
        def loss_fn(p):
            logits, state = model.apply(
                {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, new_stats

    params = jax.device_put(variables["params"])
    stats = jax.device_put(variables["batch_stats"])
    x, y = jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(labels)
    start = time.perf_counter()
    compiled = step.lower(params, stats, x, y).compile()
    compile_s = time.perf_counter() - start

    def run():
        jax.block_until_ready(compiled(params, stats, x, y))

    return run, compile_s


def torch_step_fn(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, frozen_bn: bool):
    model.train()
    if frozen_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    x, y = torch.from_numpy(images), torch.from_numpy(labels).long()

    def run():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    return run


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    images = rng.normal(size=(FLAGS.batch, 3, FLAGS.size, FLAGS.size)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=FLAGS.batch).astype(np.int32)
    torch.manual_seed(0)
    reference = torch_resnet(FLAGS.arch, NUM_CLASSES)
    variables, _, _ = convert_state_dict({k: v.numpy() for k, v in reference.state_dict().items()})

    print(
        f"{FLAGS.arch} forward+backward, batch {FLAGS.batch}, {FLAGS.size}x{FLAGS.size}, "
        f"BN {'frozen' if FLAGS.frozen_bn else 'train'}, median of {FLAGS.iters} alternating rounds "
        f"after {FLAGS.warmup} warm-up"
    )
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs"
    )
    run, compile_s = flax_step_fn(FLAGS.arch, variables, images, labels, FLAGS.frozen_bn)
    print(f"  flax compile: {compile_s:.1f} s")
    steps = {
        "probdml (flax/xla)": run,
        "torch reference": torch_step_fn(reference, images, labels, FLAGS.frozen_bn),
    }
    try:
        import torchvision
    except ImportError:
        print("  torchvision: not installed, skipped (the torch reference is its exact copy)")
    else:
        tv = getattr(torchvision.models, FLAGS.arch)(weights=None)
        steps[f"torchvision {torchvision.__version__}"] = torch_step_fn(tv, images, labels, FLAGS.frozen_bn)
    results = time_interleaved(steps, FLAGS.iters, FLAGS.warmup)
    base = results["torch reference"]
    for name, seconds in results.items():
        print(
            f"  {name:24s} {seconds:8.3f} s/step  {FLAGS.batch / seconds:8.2f} images/s  "
            f"x{base / seconds:.2f} vs torch reference"
        )


if __name__ == "__main__":
    app.run(main)
