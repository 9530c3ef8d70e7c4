"""Methods x seeds on an embedded dataset under one budget: retrieval and uncertainty, val-selected.

Every method trains the same network on the same data for the same number of steps with the same
batch size; only the loss/similarity (and, for IDML, the uncertainty head and Mixup) differ. On glyphs
(and its `ambiguous` variant) every run trains on the 'train_sub' classes, evaluates the held-out
training classes ('val') `--evals` times, and reports the unseen test classes at the val-selected step
and at the final step (probdml.train.Selection); digits (5 training classes) reports the final step.
Columns: test recall@1 and MAP@R at the selected step (and recall@1 at the final step), R-AUROC of the
model's own uncertainty (IDML ||u||^2, EL-nivMF -||e||), of the nearest-neighbour similarity and of the
pre-normalisation norm (probdml.metrics.uncertainty_report), recall@1 after rejecting the 20% most
uncertain queries by the model's score (else the nearest-neighbour one), and on `glyphs_ambiguous` the
Spearman correlation of each score with the recorded degradation severity.

Methods (configs/<dataset>*.py); ablations are a method plus config overrides (VARIANTS):

  proxy_anchor        configs/<dataset>.py                ProxyAnchor, cosine
  proxy_anchor_mixup  configs/<dataset>.py + Mixup        Mixup without the ISM
  idml_proxy_anchor   configs/<dataset>_idml.py           IDML-ProxyAnchor: uncertainty head, ISM, Mixup
  idml_compat         configs/<dataset>_idml.py:compat    the official code's ISM
  el_nivmf            configs/<dataset>_nivmf.py          EL-nivMF: vMF images, nivMF proxies, ProxyNCA++
  el_nivmf_d16        configs/<dataset>_nivmf.py, dim 16

    python benchmarks/methods.py --dataset=glyphs --seeds 0 1 2 --workdir=/tmp/methods_glyphs
    python benchmarks/methods.py --dataset=glyphs --methods idml_proxy_anchor idml_tau2.5 --seeds 0
    python benchmarks/methods.py --dataset=glyphs --plot=/tmp/glyphs_rejection.png ...

Runs go one after another in this process. With --workdir, a finished run (its benchmark_result.json
with the same steps) is read back instead of retrained, and an interrupted run resumes from its last
checkpoint, so an interrupted benchmark is continued by rerunning the same command.
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

DATASETS = ("glyphs", "glyphs_ambiguous", "digits")
BASE_METHODS = ("proxy_anchor", "proxy_anchor_mixup", "idml_proxy_anchor", "idml_compat", "el_nivmf", "el_nivmf_d16")
# Ablations: (base method, {dotted config field: value}).
TORCH_INIT = {"model.uncertainty_init_scale": 1.0}  # the uncertainty head at PyTorch's init (the pre-fix default)
# EL-nivMF's previous glyphs default: the vMF head at PyTorch's init scale, nivMF proxies of concentration 10
INIT1 = {"model.init_norm_multiplier": 1.0, "loss.proxy_concentration": 10.0}
FIXED_T = {"loss.learn_temperature": False, "optim.lr_mults": {"proxies": 100.0, "proxy_kappa": 100.0},
           "optim.weight_decay_mults": {"proxies": 0.0, "proxy_kappa": 0.0}}  # T = 1, not learned
VARIANTS: dict[str, tuple[str, dict]] = {
    "idml_torch_init": ("idml_proxy_anchor", TORCH_INIT),
    "idml_torch_init_tau2.5": ("idml_proxy_anchor", {**TORCH_INIT, "loss.similarity_options.tau": 2.5}),
    "idml_torch_init_tau20": ("idml_proxy_anchor", {**TORCH_INIT, "loss.similarity_options.tau": 20.0}),
    "idml_torch_init_alpha_sq": ("idml_proxy_anchor", {**TORCH_INIT, "loss.similarity_options.alpha_mode": "sqeuclid_norm"}),
    "idml_torch_init_no_mixup": ("idml_proxy_anchor", {**TORCH_INIT, "mixup.enabled": False}),
    "idml_torch_init_uwarmup": ("idml_proxy_anchor", {**TORCH_INIT, "optim.frozen_until.uncertainty": "quarter"}),
    "idml_ulr1": ("idml_proxy_anchor", {"optim.lr_mults.uncertainty": 1.0}),
    "idml_ulr0.01": ("idml_proxy_anchor", {"optim.lr_mults.uncertainty": 0.01}),
    "idml_clean2": ("idml_proxy_anchor", {"mixup.clean_weight": 2.0}),
    "idml_mix_alpha0.4": ("idml_proxy_anchor", {"mixup.alpha": 0.4}),
    "proxy_anchor_mixup_alpha0.4": ("proxy_anchor_mixup", {"mixup.alpha": 0.4}),
    # EL-nivMF ablations of the previous glyphs default (INIT1: init_norm_multiplier 1, proxy concentration 10);
    # the current one (configs/glyphs_nivmf.py) is init_norm_multiplier 10, proxy concentration 50
    "el_nivmf_init1": ("el_nivmf", INIT1),
    "el_nivmf_guidance": ("el_nivmf", {**INIT1, "loss.guidance_weight": 1.0}),
    "el_nivmf_fixed_T": ("el_nivmf", {**INIT1, **FIXED_T}),
    "el_nivmf_T0.1": ("el_nivmf", {**INIT1, "loss.temperature": 0.1}),
    "el_nivmf_no_warm_start": ("el_nivmf", {**INIT1, "loss.warm_start": False}),
    "el_nivmf_init_norm10": ("el_nivmf", {**INIT1, "model.init_norm_multiplier": 10.0}),
    "el_nivmf_conc50": ("el_nivmf", {**INIT1, "loss.proxy_concentration": 50.0}),
    "el_nivmf_init_norm10_fixed_T": ("el_nivmf", {**INIT1, "model.init_norm_multiplier": 10.0, **FIXED_T}),
    "el_nivmf_conc50_init10": ("el_nivmf", {"model.init_norm_multiplier": 10.0, "loss.proxy_concentration": 50.0}),
}
METHODS = BASE_METHODS + tuple(VARIANTS)
SCORES = ("model", "nn_similarity", "norm")


def _set(config, dotted: str, value) -> None:
    *path, leaf = dotted.split(".")
    node = config
    for key in path:
        node = node[key]
    if value == "quarter":  # a quarter of the run's steps (warm-up lengths)
        value = config.num_steps // 4
    node[leaf] = value


def method_config(dataset: str, method: str, steps: int = 0, batch_size: int = 0):
    """The config of `method` on `dataset` (see the module docstring), with `steps` training steps and batch
    size `batch_size` (0 = the config's own) applied before the ablation overrides that depend on them."""
    import ml_collections

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if method in VARIANTS:
        base, overrides = VARIANTS[method]
        config = method_config(dataset, base, steps, batch_size)
        for key, value in overrides.items():
            _set(config, key, value)
        return config
    if method in ("proxy_anchor", "proxy_anchor_mixup"):
        config = importlib.import_module(f"configs.{dataset}").get_config()
        if method == "proxy_anchor_mixup":
            config.mixup = ml_collections.ConfigDict(dict(enabled=True, alpha=1.0, clean_weight=1.0))
    elif method in ("idml_proxy_anchor", "idml_compat"):
        config = importlib.import_module(f"configs.{dataset}_idml").get_config(
            "compat" if method == "idml_compat" else "")
    elif method in ("el_nivmf", "el_nivmf_d16"):
        config = importlib.import_module(f"configs.{dataset}_nivmf").get_config()
        if method == "el_nivmf_d16":
            config.model.embed_dim = 16
    else:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if steps > 0:
        config.num_steps = steps
        if "decay_steps" in config.optim:
            config.optim.decay_steps = steps
    if batch_size > 0:
        config.data.batch_size = batch_size
    return config


def run(dataset: str, method: str, seed: int, steps: int, batch_size: int, evals: int, data_dir: str,
        root: str) -> dict:
    """Train and evaluate one (method, seed) in root/<method>_<seed>: the summary of its final_metrics.json
    (test at the val-selected step where the dataset selects, else at the final step) plus wall seconds."""
    from probdml import train

    workdir = os.path.join(root, f"{method}_{seed}")
    config = method_config(dataset, method, steps, batch_size)
    config.seed = seed
    done = os.path.join(workdir, "benchmark_result.json")
    if os.path.exists(done):
        with open(done) as f:
            result = json.load(f)
        if (result.get("steps"), result.get("batch_size")) == (config.num_steps, config.data.batch_size):
            print(f"{method} seed {seed}: read back from {done}", flush=True)
            with open(os.path.join(workdir, "final_metrics.json")) as f:
                return {**summarize(json.load(f)), **result}
    config.data.data_dir = data_dir
    config.eval_every = max(config.num_steps // evals, 1)
    config.checkpoint_every = config.eval_every
    config.eval.clustering = False
    t0 = time.perf_counter()
    record = train.train_and_evaluate(config, workdir)
    result = summarize(record)
    result.update(steps=config.num_steps, batch_size=config.data.batch_size, seconds=time.perf_counter() - t0)
    with open(done, "w") as f:
        json.dump(result, f, indent=1)
    return result


def summarize(record: dict) -> dict:
    """The reported test metrics of a run record (`train.train_and_evaluate`): those of the selected step when
    the run selects, else of the final step; with 'final_recall@1' and the step they come from."""
    reported = record.get("selected", {k: v for k, v in record.items() if isinstance(v, float)})
    step = record["selection"]["step"] if "selection" in record else record["step"]
    selected = {"val_" + record["selection"]["metric"].split("/", 1)[1]: record["selection"]["value"]} \
        if "selection" in record else {}
    return {**reported, **selected, "final_recall@1": record["recall@1"], "reported_step": step,
            "final_step": record["step"]}


def raw_pixel_baseline(dataset: str, data_dir: str) -> dict[str, float]:
    """Cosine kNN retrieval on the flattened raw test images, with its nearest-neighbour and norm R-AUROC."""
    import numpy as np

    from probdml import data, metrics

    config = method_config(dataset, "proxy_anchor")
    config.data.data_dir = data_dir
    test = data.load_split(config.data, "test")
    pixels = test.images.reshape(len(test), -1).astype(np.float32)
    out, scores, idx = metrics.retrieval_metrics(pixels, test.labels, ks=(1,), metric="cosine", return_neighbors=True)
    correct = test.labels[idx[:, 0]] == test.labels
    out.update(metrics.uncertainty_report(
        correct, {"nn_similarity": -scores[:, 0], "norm": -np.linalg.norm(pixels, axis=-1)}, primary="nn_similarity",
        severity=getattr(test, "severity", None)))
    return out


def _mean_sd(values: list[float]) -> str:
    if any(v != v for v in values):
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def columns(severity: bool) -> list[tuple[str, str]]:
    cols = [("val R@1 (sel.)", "val_recall@1"), ("R@1 (sel.)", "recall@1"), ("R@1 (final)", "final_recall@1"),
            ("MAP@R", "map@r")]
    cols += [(f"R-AUROC {s}", f"r_auroc/{s}") for s in SCORES]
    cols += [("R@1 rej. 20%", "recall@1/reject20")]
    if severity:
        cols += [(f"Spearman(sev.) {s}", f"spearman_severity/{s}") for s in SCORES]
        cols += [("R@1 sev. q1", "recall@1/severity_q1"), ("R@1 sev. q5", "recall@1/severity_q5")]
    return cols


def table(results: dict[str, dict[int, dict]], baseline: dict | None, severity: bool) -> str:
    """A markdown table: mean ± sample standard deviation over seeds ('-' where a method has no such score),
    and wall minutes per run."""
    cols = columns(severity)
    lines = ["| method | seeds | " + " | ".join(c for c, _ in cols) + " | min/run |", "|---" * (len(cols) + 3) + "|"]
    for method, by_seed in results.items():
        runs = list(by_seed.values())
        cells = [_mean_sd([r.get(k, float("nan")) for r in runs]) for _, k in cols]
        minutes = statistics.mean(r["seconds"] for r in runs) / 60 if all("seconds" in r for r in runs) else float("nan")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + f" | {minutes:.1f} |")
    if baseline is not None:
        cells = [_mean_sd([baseline[k]]) if k in baseline else "-" for _, k in cols]
        lines.append("| raw pixels (cosine) | - | " + " | ".join(cells) + " | - |")
    return "\n".join(lines)


def plot(results: dict[str, dict[int, dict]], path: str, title: str) -> None:
    """recall@1 of the kept queries against the rejected fraction (0, 10, 20, 50%), mean over seeds, one
    curve per method (colour) and uncertainty score (line style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    styles = {"model": "-", "nn_similarity": "--", "norm": ":"}
    fractions = [0, 10, 20, 50]
    fig, ax = plt.subplots(figsize=(10.5, 5.0))
    colours = plt.get_cmap("tab10")
    for i, (method, by_seed) in enumerate(results.items()):
        runs = list(by_seed.values())
        for score, style in styles.items():
            keys = ["recall@1"] + [f"recall@1/reject{p}/{score}" for p in fractions[1:]]
            if not all(k in r for r in runs for k in keys):
                continue
            ys = np.mean([[r[k] for k in keys] for r in runs], axis=0)
            ax.plot(fractions, ys, style, marker="o", ms=3, color=colours(i % 10),
                    label=f"{method} / {score}")
    ax.set_xlabel("rejected test queries, most uncertain first (%)")
    ax.set_ylabel("recall@1 of the kept queries")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method / uncertainty score",
              title_fontsize=7)
    fig.text(0.01, 0.01, "A useful uncertainty makes the curve rise. Solid: the model's own score (IDML ||u||^2, "
             "EL-nivMF -||e||, the same as dotted for EL-nivMF); dashed: low nearest-neighbour similarity; "
             "dotted: low embedding norm.", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="glyphs", choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=["proxy_anchor", "idml_proxy_anchor", "el_nivmf"],
                        choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=0, help="training steps of every run (0 = the configs')")
    parser.add_argument("--batch_size", type=int, default=0, help="batch size of every run (0 = the configs')")
    parser.add_argument("--evals", type=int, default=4, help="evaluations per run (val where the dataset selects)")
    parser.add_argument("--data_dir", default="", help="TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--workdir", default="", help="where the runs go (default: a temporary directory)")
    parser.add_argument("--no_baseline", action="store_true", help="skip the raw-pixel baseline")
    parser.add_argument("--json", default="", help="also write every run's metrics to this file")
    parser.add_argument("--plot", default="", help="write the rejection-curve PNG here")
    parser.add_argument("--no_train", action="store_true",
                        help="only report the finished runs found in --workdir (missing seeds are left out)")
    args = parser.parse_args()
    if args.no_train and not args.workdir:
        parser.error("--no_train needs --workdir")

    root = args.workdir or tempfile.mkdtemp(prefix=f"{args.dataset}_methods_")
    os.makedirs(root, exist_ok=True)
    results: dict[str, dict[int, dict]] = {m: {} for m in args.methods}
    for seed in args.seeds:  # seed-major: every method has a result early
        for method in args.methods:
            done = os.path.join(root, f"{method}_{seed}", "benchmark_result.json")
            if args.no_train and not os.path.exists(done):
                continue
            results[method][seed] = run(args.dataset, method, seed, args.steps, args.batch_size, args.evals,
                                        args.data_dir, root)
    results = {m: by for m, by in results.items() if by}

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
    config = method_config(args.dataset, args.methods[0], args.steps, args.batch_size)
    steps = f"{config.num_steps} steps of batch {config.data.batch_size}"
    where = ("test metrics at the final step" if args.dataset == "digits" else
             "test metrics at the val-selected step (R@1 final: at the last step)")
    severity = any("spearman_severity/nn_similarity" in r for by in results.values() for r in by.values())
    print()
    print(f"{args.dataset}: unseen test classes, {steps}, {where}; mean ± std over the seeds of each row")
    print(table(results, baseline, severity))
    for method, by_seed in results.items():
        print(f"{method}: seeds {' '.join(map(str, by_seed))}; recall@1 "
              + " ".join(f"{r['recall@1']:.4f}" for r in by_seed.values())
              + "; val-selected steps " + " ".join(str(r["reported_step"]) for r in by_seed.values()))
    if args.plot:
        plot(results, args.plot, f"{args.dataset}, {steps}: recall@1 on the unseen test classes after rejecting "
                                 f"the most uncertain queries\n({where.split(' (')[0]}, mean over each row's seeds)")
        print(f"wrote {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"baseline": baseline, "runs": {m: {str(s): r for s, r in by.items()}
                                                      for m, by in results.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
