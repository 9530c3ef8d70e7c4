"""One accelerator check (GPU or TPU), in under 8 minutes: the ProxyAnchor train step of ResNet-50 at
224 x 224, batch 120, in bfloat16 and float32 compute (`model.dtype`) on all devices.

Prints, per dtype: compile time, images/s, the step's FLOPs (XLA's cost analysis of the compiled step,
per device) and the achieved TFLOP/s against the device's peak (dense bf16 / f32 tensor throughput of
the known device kinds below, or --peak-tflops); then one step on 1 device and on all devices from the
same state and batch, with the loss difference and the largest relative parameter difference (the
data-parallel step must equal the 1-device step to float32 rounding, ~1e-5).

    python benchmarks/gpu_check.py                     # on the accelerator machine
    python benchmarks/gpu_check.py --allow-cpu --backbone resnet18 --image-size 32 --batch 8 --steps 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

# Dense peak TFLOP/s per device (bf16, f32 without TF32), from the vendors' data sheets.
PEAK_TFLOPS = {
    "H200": (989.0, 67.0),
    "H100": (989.0, 67.0),
    "A100": (312.0, 19.5),
    "L4": (121.0, 30.3),
    "TPU v4": (275.0, 275.0 / 2),
    "TPU v5 lite": (197.0, 197.0 / 2),
    "TPU v5p": (459.0, 459.0 / 2),
    "TPU v6 lite": (918.0, 918.0 / 2),
}


def peak_for(kind: str, dtype: str, override: float) -> float:
    """The device's peak TFLOP/s for `dtype` (0 when unknown and not given)."""
    if override > 0:
        return override
    for name, (bf16, f32) in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return bf16 if dtype != "float32" else f32
    return 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=120)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--method", default="proxy_anchor", choices=("proxy_anchor", "idml", "el_nivmf"))
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak, if its kind is not known")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU (a quick check of this script)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.image_size < 32:
        parser.error(f"need --batch >= 1, --steps >= 1, --image-size >= 32; got {args.batch}, {args.steps}, {args.image_size}")
    return args


def equality(config, image_shape) -> tuple[float, float]:
    """(|loss_1 - loss_all| / |loss_1|, max relative parameter difference) of one step on 1 vs all devices."""
    import jax

    from probdml import parallel, train

    n = jax.device_count()
    rng = np.random.default_rng(1)
    batch = {"image": rng.standard_normal((config.data.batch_size, *image_shape), dtype=np.float32),
             "label": (np.arange(config.data.batch_size) % 100).astype(np.int32)}
    results = []
    for devices in (1, n):
        mesh = parallel.make_mesh(devices)
        setup = train.create_setup(config, mesh, 100, image_shape)
        state, metrics = setup.train_step(setup.state, parallel.global_batch(mesh, batch))
        results.append((float(metrics["loss"]), jax.device_get(state.params)))
    (l1, p1), (ln, pn) = results
    diff = max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
               for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(pn)))
    return abs(l1 - ln) / max(abs(l1), 1e-30), diff


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax

    from train_step import method_config, time_jax_step

    start = time.perf_counter()
    kind = jax.devices()[0].device_kind
    if jax.default_backend() == "cpu" and not args.allow_cpu:
        print("no accelerator: jax sees only CPU devices (pass --allow-cpu to check this script on CPU)")
        return 2
    print(f"{jax.device_count()} x {kind} ({jax.default_backend()}); {args.method}, {args.backbone} at "
          f"{args.image_size}, batch {args.batch}", flush=True)
    shape = (args.image_size, args.image_size, 3)
    for dtype in ("bfloat16", "float32"):
        r = time_jax_step(method_config(args.method, args.backbone, args.batch, dtype), shape, args.steps)
        tflops = r["step_flops"] / r["step_s"] / 1e12
        peak = peak_for(kind, dtype, args.peak_tflops)
        share = f" = {tflops / peak:.1%} of the {peak:g} TFLOP/s peak per device" if peak and np.isfinite(tflops) else ""
        print(f"{dtype:9s} compile {r['compile_s']:6.1f} s  {r['images_per_s']:9.1f} images/s  "
              f"{r['step_flops'] / 1e9:9.1f} GFLOP/step/device  {tflops:7.2f} TFLOP/s{share}", flush=True)
    if jax.device_count() > 1:
        loss_diff, param_diff = equality(method_config(args.method, args.backbone, args.batch, "float32"), shape)
        print(f"1 vs {jax.device_count()} devices (float32): loss rel. diff {loss_diff:.1e}, "
              f"max param rel. diff {param_diff:.1e}", flush=True)
    else:
        print("1 device only: no 1-vs-all-devices comparison")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
