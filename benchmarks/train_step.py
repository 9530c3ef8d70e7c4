"""Throughput of the full jitted train step (images/s), against a PyTorch step in the same run, and of
the input pipeline at 1 and 2 CPU workers.

For each method (ProxyAnchor, IDML-ProxyAnchor with Mixup, EL-nivMF: the recipe configs of
probdml.recipes / probdml.nivmf_recipes, trained from scratch) and compute dtype (float32, bfloat16:
`model.dtype`), the step of `train.create_setup` (forward, loss, backward, optimizer update, on all
local devices) is compiled once (compile time printed separately) and timed over `--steps` steps on
random images. The PyTorch reference is the same ResNet (tests/torch_resnet.py, torchvision's
layout) + linear 512-d embedding + pytorch-metric-learning ProxyAnchorLoss + AdamW, float32 and
bfloat16 autocast; its ratio is printed next to each JAX figure (ratios cancel machine load).
`--small` adds the embedded datasets' small networks (digits SmallConvNet, glyphs SmallResNet).
`--pipeline` measures the real-dataset training pipeline (ArrayRecord JPEG reads, random resized
crop 224, flip, normalisation) on fake CUB JPEGs of the real size (500x375), in a child process
pinned to 1 and then 2 CPU cores, so a reader sees how many cores feed one accelerator.

The default is the paper setting, ResNet-50 at 224 x 224, batch 120 (an accelerator run). On a
CPU-only machine use e.g. `--image-size 64 --batch 16 --steps 2` and say so.

    python benchmarks/train_step.py                                   # ResNet-50, 224, batch 120
    python benchmarks/train_step.py --image-size 64 --batch 16 --steps 2 --small --pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METHODS = ("proxy_anchor", "idml", "el_nivmf")
DTYPES = ("float32", "bfloat16")
NUM_CLASSES = 100  # CUB-200's 100 training classes


def method_config(method: str, backbone: str, batch: int, dtype: str):
    """The recipe config of `method` on CUB-200 with `backbone` trained from scratch, batch `batch`."""
    from probdml import nivmf_recipes, recipes

    if method == "proxy_anchor":
        config = recipes.proxy_anchor_config("cub200")
    elif method == "idml":
        from configs import cub200_idml

        config = cub200_idml.get_config()
    elif method == "el_nivmf":
        config = nivmf_recipes.nivmf_retrieval_config("cub200")
    else:
        raise SystemExit(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    config.model.pretrained = ""
    config.model.backbone = backbone
    config.model.dtype = dtype
    config.data.batch_size = batch
    return config


def small_config(name: str, dtype: str):
    """The embedded datasets' networks: digits (SmallConvNet, 8x8) and glyphs (SmallResNet, 32x32)."""
    from configs import digits, glyphs

    config = (digits if name == "digits" else glyphs).get_config()
    config.model.dtype = dtype
    shape = (8, 8, 1) if name == "digits" else (32, 32, 1)
    return config, shape


def time_jax_step(config, image_shape, steps: int) -> dict:
    """Compile time and images/s of the jitted train step of `config` on random images."""
    import jax

    from probdml import parallel, train

    mesh = parallel.make_mesh(0)
    batch_size = config.data.batch_size
    setup = train.create_setup(config, mesh, NUM_CLASSES, image_shape)
    rng = np.random.default_rng(0)
    batch = parallel.global_batch(mesh, {
        "image": rng.standard_normal((batch_size, *image_shape), dtype=np.float32),
        "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
    })
    t0 = time.perf_counter()
    compiled = setup.train_step.lower(setup.state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(setup.state, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    loss = float(jax.block_until_ready(metrics)["loss"])
    seconds = time.perf_counter() - t0
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan")) if hasattr(compiled, "cost_analysis") else float("nan")
    if isinstance(flops, list):
        flops = flops[0].get("flops", float("nan")) if flops else float("nan")
    return {"compile_s": compile_s, "images_per_s": steps * batch_size / seconds, "loss": loss,
            "step_flops": float(flops), "step_s": seconds / steps, "devices": mesh.devices.size}


def time_torch_step(arch: str, image_size: int, batch: int, steps: int, dtype: str) -> dict:
    """images/s of ResNet + linear embedding + PML ProxyAnchorLoss + AdamW in PyTorch (bf16: autocast)."""
    import torch
    from pytorch_metric_learning import losses as pml_losses

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from torch_resnet import pooled_features, torch_resnet

    torch.manual_seed(0)
    backbone = torch_resnet(arch)
    embed = torch.nn.Linear(2048 if arch in ("resnet50", "resnet101", "resnet152") else 512, 512)
    loss_fn = pml_losses.ProxyAnchorLoss(NUM_CLASSES, 512, margin=0.1, alpha=32)
    params = list(backbone.parameters()) + list(embed.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(batch, 3, image_size, image_size)
    y = torch.randint(0, NUM_CLASSES, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            e = embed(pooled_features(backbone, x, "avg+max"))
        loss = loss_fn(e.float(), y)
        loss.backward()
        opt.step()
        return loss

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"images_per_s": steps * batch / (time.perf_counter() - t0)}


def pipeline_rate(cores: int, images: int, batch: int, batches: int) -> float:
    """Training-pipeline images/s in a child process pinned to the first `cores` CPU cores."""
    code = (
        "import os, sys, json; os.sched_setaffinity(0, set(range(%d)));"
        "sys.argv = ['pipeline', '--images', '%d', '--batch', '%d', '--batches', '%d', '--json'];"
        "sys.path.insert(0, %r); import pipeline; pipeline.main()" % (cores, images, batch, batches, os.path.join(ROOT, "benchmarks"))
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["train, ArrayRecord reads"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=120)
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the compile and one warm-up step")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--small", action="store_true", help="also the digits and glyphs networks")
    parser.add_argument("--pipeline", action="store_true", help="also the input pipeline at 1 and 2 CPU cores")
    parser.add_argument("--pipeline-images", type=int, default=200)
    parser.add_argument("--json", default="", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.image_size < 32 or args.steps < 1:
        parser.error(f"need --batch >= 1, --image-size >= 32, --steps >= 1; got {args.batch}, {args.image_size}, {args.steps}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import jax

    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; {os.cpu_count()} CPU cores; load "
          f"{os.getloadavg()[0]:.1f}; {args.backbone} at {args.image_size}, batch {args.batch}, {args.steps} steps", flush=True)
    results: dict = {"jax": {}, "torch": {}, "pipeline": {}}
    if not args.no_torch:
        for dtype in ("float32", "bfloat16"):
            r = time_torch_step(args.backbone, args.image_size, args.batch, args.steps, dtype)
            results["torch"][dtype] = r
            print(f"torch  proxy_anchor   {dtype:9s} {r['images_per_s']:9.1f} images/s", flush=True)
    shape = (args.image_size, args.image_size, 3)
    runs = [(m, method_config(m, args.backbone, args.batch, d), shape, d) for m in args.methods for d in args.dtypes]
    if args.small:
        runs += [(name, *small_config(name, d), d) for name in ("digits", "glyphs") for d in args.dtypes]
    for name, config, image_shape, dtype in runs:
        r = time_jax_step(config, image_shape, args.steps)
        results["jax"][f"{name}/{dtype}"] = r
        torch_rate = results["torch"].get(dtype, {}).get("images_per_s")
        ratio = f"  {r['images_per_s'] / torch_rate:5.2f}x torch {dtype}" if torch_rate and image_shape == shape else ""
        print(f"jax    {name:14s} {dtype:9s} {r['images_per_s']:9.1f} images/s  compile {r['compile_s']:6.1f} s"
              f"  loss {r['loss']:.3f}{ratio}", flush=True)
    if args.pipeline:
        for cores in (1, 2):
            rate = pipeline_rate(cores, args.pipeline_images, 64, 20)
            results["pipeline"][cores] = rate
            print(f"input pipeline (train, JPEG 500x375 -> 224) on {cores} CPU core(s): {rate:7.0f} images/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
