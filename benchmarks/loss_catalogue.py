"""Train the digits default (configs/digits.py) with each loss of the catalogue and print recall@1.

    python benchmarks/loss_catalogue.py [--losses circle sup_con ...] [--steps N]

configs/digits.py carries ProxyAnchor's options (margin, alpha), which other losses reject, so
`--config.loss.name=X` alone cannot switch the loss: each run takes the digits config with its loss
section replaced by {name: X, similarity: 'cosine'} (the loss's defaults, pytorch-metric-learning's),
with no proxy learning-rate multiplier for losses without proxies, optionally with num_steps = N, and runs train.train_and_evaluate in a fresh subprocess, one loss after
another. It prints the final metrics line (test split, at the last step) and the run's wall time. Losses
without a config objective (objective.LABEL_FREE_LOSSES) are skipped with their reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from probdml import objective  # noqa: E402


def run_one(name: str, steps: int | None, options: dict | None = None, lr: float | None = None) -> None:
    """Train one loss (with `options`, extra loss hyper-parameters) in this process and print its final metrics."""
    import ml_collections

    from configs import digits
    from probdml import train

    config = digits.get_config()
    config.loss = ml_collections.ConfigDict({"name": name, "similarity": "cosine", **(options or {})})
    if name not in objective.PROXY_LOSSES:  # the digits config's proxy learning-rate multiplier
        config.optim.lr_mults = {}
    if steps is not None:
        config.num_steps = steps
    if lr is not None:
        config.optim.learning_rate = lr
    with tempfile.TemporaryDirectory() as workdir:
        metrics = train.train_and_evaluate(config, workdir)
    print("final " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                               if k in ("step", "split", "recall@1", "map@r", "r_auroc/nn_similarity")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = sorted(n for n in objective.LOSSES if n not in objective.LOSS_ALIASES)
    parser.add_argument("--losses", nargs="*", default=names)
    parser.add_argument("--steps", type=int, default=None, help="override config.num_steps (digits: 400)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help="JSON dict of loss hyper-parameters for every loss")
    parser.add_argument("--lr", type=float, default=None, help="override config.optim.learning_rate (digits: 3e-4)")
    args = parser.parse_args()
    if args.one is not None:
        run_one(args.one, args.steps, json.loads(args.options), args.lr)
        return
    print(f"load average {os.getloadavg()[0]:.1f}; {len(args.losses)} losses, one run at a time")
    for name in args.losses:
        if name in objective.LABEL_FREE_LOSSES:
            print(f"{name:36s} skipped: {objective.LABEL_FREE_LOSSES[name]}")
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--options", args.options]
        if args.steps is not None:
            cmd += ["--steps", str(args.steps)]
        if args.lr is not None:
            cmd += ["--lr", str(args.lr)]
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
        final = [line for line in proc.stdout.splitlines() if line.startswith("final ")]
        if proc.returncode == 0 and final:
            result = final[-1]
        else:
            result = f"FAILED (exit {proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]}"
        print(f"{name:36s} {time.time() - start:6.0f} s  {result}", flush=True)


if __name__ == "__main__":
    main()
