"""Methods x seeds on the embedded digits (train classes 0-4, test classes 5-9): recall@1 on the unseen
classes after the default budget (configs/digits.py: 400 steps of batch 64), as a table of means and spread.

Methods (each a config file with its overrides):

  proxy_anchor        configs/digits.py                  ProxyAnchor, cosine
  idml_proxy_anchor   configs/digits_idml.py             IDML-ProxyAnchor: uncertainty head, ISM, Mixup
  proxy_anchor_mixup  configs/digits.py + Mixup          ablation: Mixup without the ISM
  idml_compat         configs/digits_idml.py:compat      the official code's ISM (inert uncertainty)

Every run evaluates once, after its last step (no intermediate or best-checkpoint selection: final
numbers), without clustering metrics. Runs go one after another in this process.

    python benchmarks/digits_methods.py                                   # the two main methods, seeds 0 1 2
    python benchmarks/digits_methods.py --methods proxy_anchor idml_proxy_anchor proxy_anchor_mixup --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


METHODS = ("proxy_anchor", "idml_proxy_anchor", "proxy_anchor_mixup", "idml_compat")


def method_config(method: str):
    import ml_collections

    from configs import digits, digits_idml

    if method == "proxy_anchor":
        return digits.get_config()
    if method == "idml_proxy_anchor":
        return digits_idml.get_config()
    if method == "proxy_anchor_mixup":
        config = digits.get_config()
        config.mixup = ml_collections.ConfigDict(dict(enabled=True, alpha=1.0, clean_weight=1.0))
        return config
    if method == "idml_compat":
        return digits_idml.get_config("compat")
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")



def run(method: str, seed: int, data_dir: str, root: str) -> dict[str, float]:
    from probdml import train

    config = method_config(method)
    config.seed = seed
    config.data.data_dir = data_dir
    config.eval_every = config.num_steps
    config.checkpoint_every = config.num_steps
    config.checkpoint_best_metric = ""
    config.eval.clustering = False
    t0 = time.perf_counter()
    metrics = train.train_and_evaluate(config, os.path.join(root, f"{method}_{seed}"))
    return {**metrics, "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["proxy_anchor", "idml_proxy_anchor"], choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data_dir", default="", help="TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--workdir", default="", help="where the runs go (default: a temporary directory)")
    parser.add_argument("--json", default="", help="also write the per-run metrics to this file")
    args = parser.parse_args()

    root = args.workdir or tempfile.mkdtemp(prefix="digits_methods_")
    os.makedirs(root, exist_ok=True)
    results: dict[str, dict[int, dict[str, float]]] = {}
    for method in args.methods:
        for seed in args.seeds:
            results.setdefault(method, {})[seed] = run(method, seed, args.data_dir, root)

    keys = ("recall@1", "map@r")
    print()
    print(f"digits, unseen classes 5-9, final step; seeds {' '.join(map(str, args.seeds))}")
    header = f"{'method':<20}" + "".join(f"{'R@1 s' + str(s):>10}" for s in args.seeds)
    header += f"{'R@1 mean':>10}{'std':>8}{'min':>8}{'max':>8}{'MAP@R mean':>12}{'std':>8}{'s/run':>7}"
    print(header)
    for method, by_seed in results.items():
        r1 = [by_seed[s]["recall@1"] for s in args.seeds]
        mapr = [by_seed[s]["map@r"] for s in args.seeds]
        sd = statistics.stdev(r1) if len(r1) > 1 else 0.0
        sd_map = statistics.stdev(mapr) if len(mapr) > 1 else 0.0
        secs = statistics.mean(by_seed[s]["seconds"] for s in args.seeds)
        print(f"{method:<20}" + "".join(f"{v:>10.4f}" for v in r1)
              + f"{statistics.mean(r1):>10.4f}{sd:>8.4f}{min(r1):>8.4f}{max(r1):>8.4f}"
              + f"{statistics.mean(mapr):>12.4f}{sd_map:>8.4f}{secs:>7.0f}")
    if len(results) > 1:
        base = args.methods[0]
        for method in args.methods[1:]:
            diffs = [results[method][s]["recall@1"] - results[base][s]["recall@1"] for s in args.seeds]
            print(f"R@1 {method} - {base} per seed: " + " ".join(f"{d:+.4f}" for d in diffs)
                  + f"  (mean {statistics.mean(diffs):+.4f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({m: {str(s): {k: v for k, v in r.items() if k in keys or k == "seconds"}
                           for s, r in by.items()} for m, by in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
