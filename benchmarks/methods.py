"""Methods x seeds on an embedded dataset (glyphs, digits or glyphs_ambiguous) under one budget, as a table of means and spread.

Every method trains the same network on the same data for the same number of steps with the same
batch size; only the loss/similarity (and, for IDML, the uncertainty head and Mixup) differ. Each run
evaluates once, after its last step, on the unseen test classes (no best-checkpoint selection: final
numbers): recall@1/2/4/8, MAP@R and the NMI of k-means with as many clusters as test classes. The
raw-pixel baseline is cosine kNN and k-means on the flattened test images. For every run the final
checkpoint's test embeddings also give the norm against 1-NN correctness (the run's eval metric):
Pearson (point-biserial) correlation and the AUROC of the norm as a certainty score
(probdml.analysis.nivmf_norms.norm_correctness; NaN for L2-normalised embeddings), and the number of
optimizer steps skipped for non-finite gradients (runs with skip_nonfinite_updates).

Methods (configs/<dataset>*.py):

  proxy_anchor        configs/<dataset>.py                ProxyAnchor, cosine
  idml_proxy_anchor   configs/<dataset>_idml.py           IDML-ProxyAnchor: uncertainty head, ISM, Mixup
  el_nivmf            configs/<dataset>_nivmf.py          EL-nivMF: vMF images, nivMF proxies, ProxyNCA++
  el_nivmf_d16        configs/<dataset>_nivmf.py, dim 16  (digits_nivmf's default dim is 128, glyphs' 64)
  proxy_anchor_mixup  configs/<dataset>.py + Mixup        ablation: Mixup without the ISM
  idml_compat         configs/<dataset>_idml.py:compat    the official code's ISM

    python benchmarks/methods.py --dataset=glyphs --seeds 0 1 2 --workdir=/tmp/methods_glyphs
    python benchmarks/methods.py --dataset=digits --methods proxy_anchor idml_proxy_anchor --seeds 0 1 2
    python benchmarks/methods.py --dataset=glyphs --steps=500      # a shorter common budget

Runs go one after another in this process. With --workdir, a run whose final_metrics.json exists is
read back instead of retrained, and an interrupted run resumes from its last checkpoint, so an
interrupted benchmark is continued by rerunning the same command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATASETS = ("glyphs", "digits", "glyphs_ambiguous")
METHODS = ("proxy_anchor", "idml_proxy_anchor", "el_nivmf", "el_nivmf_d16", "proxy_anchor_mixup", "idml_compat")
COLUMNS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi")


def method_config(dataset: str, method: str):
    """The config of `method` on `dataset` (see the module docstring)."""
    import ml_collections

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if method in ("proxy_anchor", "proxy_anchor_mixup"):
        config = importlib.import_module(f"configs.{dataset}").get_config()
        if method == "proxy_anchor_mixup":
            config.mixup = ml_collections.ConfigDict(dict(enabled=True, alpha=1.0, clean_weight=1.0))
        return config
    if method in ("idml_proxy_anchor", "idml_compat"):
        return importlib.import_module(f"configs.{dataset}_idml").get_config("compat" if method == "idml_compat" else "")
    if method in ("el_nivmf", "el_nivmf_d16"):
        config = importlib.import_module(f"configs.{dataset}_nivmf").get_config()
        if method == "el_nivmf_d16":
            config.model.embed_dim = 16
        return config
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def run(dataset: str, method: str, seed: int, steps: int, data_dir: str, root: str) -> dict[str, float]:
    """Train and evaluate one (method, seed) in root/<method>_<seed>; metrics plus wall seconds."""
    from probdml import train

    workdir = os.path.join(root, f"{method}_{seed}")
    config = method_config(dataset, method)
    config.seed = seed
    if steps > 0:
        config.num_steps = steps
        if "decay_steps" in config.optim:
            config.optim.decay_steps = steps
    done = os.path.join(workdir, "benchmark_result.json")
    if os.path.exists(done):
        with open(done) as f:
            metrics = json.load(f)
        if metrics.get("steps") == config.num_steps:
            print(f"{method} seed {seed}: read back from {done}", flush=True)
            return metrics
    config.data.data_dir = data_dir
    config.eval_every = config.num_steps
    config.checkpoint_every = max(config.num_steps // 5, 1)
    config.checkpoint_best_metric = ""
    config.eval.clustering = True
    t0 = time.perf_counter()
    metrics = train.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - t0
    metrics = {**metrics, **norm_statistics(workdir), "steps": config.num_steps, "seconds": seconds}
    with open(done, "w") as f:
        json.dump(metrics, f, indent=1)
    return metrics


def norm_statistics(workdir: str) -> dict[str, float]:
    """Norm vs 1-NN correctness of the final checkpoint's test embeddings, and the skipped steps."""
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


def raw_pixel_baseline(dataset: str, data_dir: str) -> dict[str, float]:
    """Cosine kNN retrieval and k-means NMI on the flattened raw test images."""
    import numpy as np

    from probdml import data, metrics

    config = method_config(dataset, "proxy_anchor")
    config.data.data_dir = data_dir
    test = data.load_split(config.data, "test")
    pixels = test.images.reshape(len(test), -1).astype(np.float32)
    out = metrics.retrieval_metrics(pixels, test.labels, ks=(1, 2, 4, 8), metric="cosine")
    out.update(metrics.clustering_metrics(pixels, test.labels, metric="cosine"))
    return out


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def table(results: dict[str, dict[int, dict[str, float]]], baseline: dict[str, float] | None) -> str:
    """A markdown table: mean ± sample standard deviation over seeds of each column; mean norm-correctness
    Pearson r and AUROC, most skipped steps, wall minutes per run (where the runs recorded them)."""
    extra = ("norm r", "norm AUROC", "skipped", "min/run")
    lines = ["| method | seeds | " + " | ".join((*COLUMNS, *extra)) + " |", "|---" * (len(COLUMNS) + len(extra) + 2) + "|"]

    def summary(runs: list[dict[str, float]], key: str, reduce, fmt: str) -> str:
        values = [r[key] for r in runs if key in r]
        return format(reduce(values), fmt) if len(values) == len(runs) else "-"

    for method, by_seed in results.items():
        runs = list(by_seed.values())
        cells = [_mean_sd([r[c] for r in runs]) for c in COLUMNS]
        cells += [summary(runs, "norm_pearson", statistics.mean, ".3f"), summary(runs, "norm_auroc", statistics.mean, ".3f"),
                  summary(runs, "skipped_steps", max, ".0f"),
                  summary(runs, "seconds", lambda v: statistics.mean(v) / 60, ".1f")]
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    if baseline is not None:
        lines.append("| raw pixels (cosine) | - | " + " | ".join(f"{baseline[c]:.4f}" for c in COLUMNS)
                     + " | - | - | - | - |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="glyphs", choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=["proxy_anchor", "idml_proxy_anchor", "el_nivmf"],
                        choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=0, help="training steps of every run (0 = the configs')")
    parser.add_argument("--data_dir", default="", help="TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--workdir", default="", help="where the runs go (default: a temporary directory)")
    parser.add_argument("--no_baseline", action="store_true", help="skip the raw-pixel baseline")
    parser.add_argument("--json", default="", help="also write every run's metrics to this file")
    args = parser.parse_args()

    root = args.workdir or tempfile.mkdtemp(prefix=f"{args.dataset}_methods_")
    os.makedirs(root, exist_ok=True)
    results: dict[str, dict[int, dict[str, float]]] = {m: {} for m in args.methods}
    for seed in args.seeds:  # seed-major: every method has a result early
        for method in args.methods:
            results[method][seed] = run(args.dataset, method, seed, args.steps, args.data_dir, root)

    baseline = None
    if not args.no_baseline:
        cached = os.path.join(root, "raw_pixel_baseline.json")
        if os.path.exists(cached):
            with open(cached) as f:
                baseline = json.load(f)
        else:
            baseline = raw_pixel_baseline(args.dataset, args.data_dir)
            with open(cached, "w") as f:
                json.dump(baseline, f, indent=1)
    steps = args.steps or method_config(args.dataset, args.methods[0]).num_steps
    print()
    print(f"{args.dataset}: unseen test classes, final step ({steps} steps); mean ± std over seeds "
          f"{' '.join(map(str, args.seeds))}")
    print(table(results, baseline))
    for method in args.methods:
        print(f"recall@1 per seed, {method}: "
              + " ".join(f"{results[method][s]['recall@1']:.4f}" for s in args.seeds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"baseline": baseline, "runs": {m: {str(s): r for s, r in by.items()}
                                                      for m, by in results.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
