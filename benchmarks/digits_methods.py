"""Methods x seeds on the embedded digits (train classes 0-4, test classes 5-9): recall@1 on the unseen
classes after the default budget (configs/digits.py: 400 steps of batch 64), as a table of means and spread.

Methods (each a config file with its overrides):

  proxy_anchor        configs/digits.py                  ProxyAnchor, cosine
  idml_proxy_anchor   configs/digits_idml.py             IDML-ProxyAnchor: uncertainty head, ISM, Mixup
  proxy_anchor_mixup  configs/digits.py + Mixup          ablation: Mixup without the ISM
  idml_compat         configs/digits_idml.py:compat      the official code's ISM (inert uncertainty)
  el_nivmf_d16        configs/digits_nivmf.py, dim 16    EL-nivMF: vMF images, nivMF proxies, closed-form EL
  el_nivmf_d128       configs/digits_nivmf.py (dim 128)

Every run evaluates once, after its last step (no intermediate or best-checkpoint selection: final
numbers), without clustering metrics. Runs go one after another in this process. For every run the
final checkpoint's test embeddings also give the norm against 1-NN correctness (the run's eval metric):
Pearson (point-biserial) correlation and the AUROC of the norm as a certainty score
(probdml.analysis.nivmf_norms.norm_correctness; NaN for L2-normalised embeddings), and the number of
optimizer steps skipped for non-finite gradients (runs with skip_nonfinite_updates).

    python benchmarks/digits_methods.py                                   # the two main methods, seeds 0 1 2
    python benchmarks/digits_methods.py --methods proxy_anchor idml_proxy_anchor proxy_anchor_mixup --seeds 0 1 2
    python benchmarks/digits_methods.py --methods proxy_anchor idml_proxy_anchor el_nivmf_d16 el_nivmf_d128
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


METHODS = ("proxy_anchor", "idml_proxy_anchor", "proxy_anchor_mixup", "idml_compat", "el_nivmf_d16", "el_nivmf_d128")


def method_config(method: str):
    import ml_collections

    from configs import digits, digits_idml, digits_nivmf

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
    if method in ("el_nivmf_d16", "el_nivmf_d128"):
        config = digits_nivmf.get_config()
        config.model.embed_dim = int(method.rsplit("_d", 1)[1])
        return config
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
    workdir = os.path.join(root, f"{method}_{seed}")
    metrics = train.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - t0
    return {**metrics, **norm_statistics(workdir), "seconds": seconds}


def norm_statistics(workdir: str) -> dict[str, float]:
    """Norm vs 1-NN correctness of the final checkpoint's test embeddings, and the skipped steps."""
    import json

    import jax
    import numpy as np

    from probdml import data, evaluate, metrics, parallel
    from probdml.analysis.gradients import read_run_config
    from probdml.analysis.nivmf_norms import load_checkpoint, norm_correctness

    config = read_run_config(workdir)
    model, state, _ = load_checkpoint(config, workdir)
    test_ds = data.load_split(config.data, "test")
    variables = {"params": state.params["model"], **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
    apply = jax.jit(lambda x: model.apply(variables, x, train=False))
    mesh = parallel.make_mesh(1)
    emb = evaluate.embed(apply, config.data, test_ds, int(config.eval.batch_size), mesh)["embedding"]
    _, idx = metrics.knn(emb, None, 1, metric=evaluate.knn_metric(config.eval.metric), mesh=mesh)
    labels = np.asarray(test_ds.labels)
    stats = norm_correctness(np.linalg.norm(emb.astype(np.float64), axis=-1), labels[idx[:, 0]] == labels)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    skipped = max((r.get("train/skipped_steps", 0) for r in rows), default=0)
    return {"norm_pearson": stats["pearson"], "norm_auroc": stats["auroc_norm_as_certainty"],
            "skipped_steps": float(skipped)}


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

    keys = ("recall@1", "map@r", "norm_pearson", "norm_auroc", "skipped_steps")
    print()
    print(f"digits, unseen classes 5-9, final step; seeds {' '.join(map(str, args.seeds))}")
    header = f"{'method':<20}" + "".join(f"{'R@1 s' + str(s):>10}" for s in args.seeds)
    header += f"{'R@1 mean':>10}{'std':>8}{'min':>8}{'max':>8}{'MAP@R mean':>12}{'std':>8}"
    header += f"{'norm r':>8}{'AUROC':>7}{'skip':>6}{'s/run':>7}"
    print(header)
    for method, by_seed in results.items():
        r1 = [by_seed[s]["recall@1"] for s in args.seeds]
        mapr = [by_seed[s]["map@r"] for s in args.seeds]
        sd = statistics.stdev(r1) if len(r1) > 1 else 0.0
        sd_map = statistics.stdev(mapr) if len(mapr) > 1 else 0.0
        secs = statistics.mean(by_seed[s]["seconds"] for s in args.seeds)
        norm_r = statistics.mean(by_seed[s]["norm_pearson"] for s in args.seeds)
        auroc = statistics.mean(by_seed[s]["norm_auroc"] for s in args.seeds)
        skipped = max(by_seed[s]["skipped_steps"] for s in args.seeds)
        print(f"{method:<20}" + "".join(f"{v:>10.4f}" for v in r1)
              + f"{statistics.mean(r1):>10.4f}{sd:>8.4f}{min(r1):>8.4f}{max(r1):>8.4f}"
              + f"{statistics.mean(mapr):>12.4f}{sd_map:>8.4f}{norm_r:>8.3f}{auroc:>7.3f}{skipped:>6.0f}{secs:>7.0f}")
    print("norm r / AUROC: Pearson correlation of the test embedding norm with 1-NN correctness and AUROC of the "
          "norm as certainty, seed means (nan: normalised embeddings); skip: most steps skipped in a run")
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
