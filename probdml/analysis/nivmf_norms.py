"""The embedding norm of an EL-nivMF run as certainty, and its two roles in the loss (specs/nivmf.md section 5).

    python -m probdml.analysis.nivmf_norms --workdir=W [--out=DIR] [--num_samples=512] [--num_shown=8]

Reads <W>/config.json and the latest checkpoint in <W>/checkpoints and writes, to --out (default
<W>/nivmf_norms):

  norm_extremes.png          test images of lowest and highest norm kappa = |e|, overall and per class
                             (a few classes); green / red: the nearest neighbour has / lacks the label
  norm_vs_correctness.png    recall@1 (the run's eval metric) by norm quantile bin, with the correlations
  temperature_role.png       class-posterior entropy against kappa (direction fixed, kappa scaled), and
                             dH/dkappa by jax.grad against the analytic form
  gradient_scale_role.png    |dL/de| and |dL/dmu| against kappa, and jax.grad against the analytic form
  nivmf_norms.json           the numbers (correlations, AUROC of the norm as certainty, deviations)

The two roles are measured on `num_samples` training images (the proxies are the training classes) with
the ProxyNCA++ term of the loss (without guidance). With e = kappa mu, the reference_linear nivMF proxy
c as the vMF of natural parameter w_c = K_c mu_c (the isotropic 'el' proxy: w_c = kappa_c mu_c), t_in = T
when the run puts the temperature inside the kernel (else 1) and t_out = T / t_in:

    s_c = a_c / t_in + log C_p(kappa) - log C_p(kt_c),  kt_c = |e + w_c / t_in|,  z_c = s_c / t_out
    pi = softmax_c(z),  L = -z_y + logsumexp_c(z),  H = -sum_c pi_c log pi_c
    dz_c/dkappa = [-A_p(kappa) + A_p(kt_c) (kappa + mu.w_c / t_in) / kt_c] / t_out
    dL/de = (1/t_out) sum_c (pi_c - delta_cy) A_p(kt_c) (e + w_c / t_in) / kt_c
            (the image's own -A_p(kappa) mu cancels: sum_c (pi_c - delta_cy) = 0)
    dH/dkappa = -sum_c pi_c (g_c - sum_c' pi_c' g_c') log pi_c,  g = dz/dkappa
    dL/dmu (tangential) = kappa (I - mu mu^T) dL/de

(section 5's EL-vMF formulas with kappa_c mu_c -> w_c / t_in). The analytic side uses scipy-independent
code paths: A_p = probdml.special.vmf_mean_resultant_length, while jax.grad differentiates the run's
registered similarity. Runs with the Monte Carlo estimator or the quadratic log C_p fit are analysed
through their estimand, the exact closed form (reported as `analysed_similarity`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

Array = jax.Array

ANALYSED_SIMILARITIES = ("el_nivmf", "el")
KAPPA_FACTORS = tuple(float(f) for f in np.geomspace(0.25, 4.0, 9))


# ----------------------------------------------------------------------------------------------------
# Pure functions


def natural_proxies(proxies: Array, kappas: Array) -> Array:
    """Proxy natural parameters w_c [C, D]: K_c mu_c for per-axis kappas [C, D] (nivMF, reference_linear),
    kappa_c mu_c for kappas [C] (isotropic vMF); mu_c = proxies_c / |proxies_c|."""
    mu = proxies / jnp.linalg.norm(proxies, axis=-1, keepdims=True)
    return kappas * mu if kappas.ndim == 2 else kappas[:, None] * mu


def _resultants(e: Array, w: Array, t_in: float) -> Array:
    """kt [N, C] = |e_i + w_c / t_in|."""
    shifted = e[:, None, :] + w[None, :, :] / t_in
    return jnp.linalg.norm(shifted, axis=-1)


def analytic_logit_kappa_slope(e: Array, w: Array, t_in: float, t_out: float) -> Array:
    """dz_c/dkappa [N, C] at fixed direction mu = e/|e|:
    [-A_p(kappa) + A_p(kt_c) (kappa + mu.w_c / t_in) / kt_c] / t_out."""
    from probdml import special

    p = e.shape[-1]
    kappa = jnp.linalg.norm(e, axis=-1)
    mu = e / kappa[:, None]
    kt = _resultants(e, w, t_in)
    along = kappa[:, None] + (mu @ w.T) / t_in
    own = special.vmf_mean_resultant_length(kappa, p)[:, None]
    return (-own + special.vmf_mean_resultant_length(kt, p) * along / kt) / t_out


def analytic_loss_gradient(e: Array, w: Array, log_pi: Array, labels: Array, t_in: float, t_out: float) -> Array:
    """dL_i/de_i [N, D] of L_i = -z_{i,y_i} + logsumexp_c z_ic, given the posterior log pi [N, C]:
    (1/t_out) sum_c (pi_c - delta_{c,y}) A_p(kt_c) (e + w_c / t_in) / kt_c."""
    from probdml import special

    p = e.shape[-1]
    kt = _resultants(e, w, t_in)
    coef = (jnp.exp(log_pi) - jax.nn.one_hot(labels, w.shape[0], dtype=e.dtype)) \
        * special.vmf_mean_resultant_length(kt, p) / kt  # [N, C]
    return (jnp.sum(coef, axis=1)[:, None] * e + coef @ w / t_in) / t_out


def posterior_entropy(logits: Array) -> Array:
    """H_i = -sum_c pi_ic log pi_ic of pi = softmax(logits) [N, C] -> [N] (nats)."""
    log_pi = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)


def analytic_entropy_slope(log_pi: Array, logit_slope: Array) -> Array:
    """dH/dkappa [N] from log pi [N, C] and g = dz/dkappa [N, C]: -sum_c pi_c (g_c - E_pi[g]) log pi_c
    (minus the covariance of g and log pi under pi)."""
    pi = jnp.exp(log_pi)
    centred = logit_slope - jnp.sum(pi * logit_slope, axis=-1, keepdims=True)
    return -jnp.sum(pi * centred * log_pi, axis=-1)


def tangential_gradient_norm(e: Array, grad_e: Array) -> Array:
    """|dL/dmu| [N] for e = kappa mu: kappa |(I - mu mu^T) dL/de| (the gradient on the sphere)."""
    kappa = jnp.linalg.norm(e, axis=-1, keepdims=True)
    mu = e / kappa
    tangential = grad_e - jnp.sum(grad_e * mu, axis=-1, keepdims=True) * mu
    return kappa[:, 0] * jnp.linalg.norm(tangential, axis=-1)


def max_relative_deviation(x: np.ndarray, y: np.ndarray, floor: float = 1e-6) -> float:
    """max_i |x_i - y_i| / max(|y_i|, floor * max_j |y_j|) over rows (vector rows: Euclidean norms), y the
    reference; the floor keeps rows where y vanishes from dominating."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if x.ndim == 1:
        x, y = x[:, None], y[:, None]
    diff = np.linalg.norm(x - y, axis=-1)
    scale = np.linalg.norm(y, axis=-1)
    return float(np.max(diff / np.maximum(scale, floor * max(float(scale.max()), np.finfo(np.float64).tiny))))


def norm_correctness(norms: np.ndarray, correct: np.ndarray, num_bins: int = 5) -> dict[str, Any]:
    """Norm against retrieval correctness: recall@1 (mean of `correct`) in `num_bins` norm-quantile bins,
    the Pearson (point-biserial) and Spearman correlations of norm and correctness, and the AUROC of the
    norm as a certainty score (P(norm of a correct query > norm of a wrong one), ties 1/2). All three are
    NaN when the norms are constant to 1e-5 relative (normalised embeddings, whose norms differ only by
    round-off), and when all queries are correct or all wrong."""
    from probdml import metrics

    norms = np.asarray(norms, np.float64)
    ok = np.asarray(correct, bool)
    if norms.ndim != 1 or norms.shape != ok.shape:
        raise ValueError(f"norms and correct must be 1-D of equal length, got {norms.shape} and {ok.shape}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    binned = metrics.accuracy_by_quantile_bin(norms, ok, num_bins)
    bins = {"edges": binned["edges"], "mean_norm": binned["mean_score"], "recall@1": binned["accuracy"],
            "count": binned["count"]}
    varied = ok.any() and not ok.all() and np.ptp(norms) > 1e-5 * np.max(np.abs(norms))
    return {
        "recall@1": float(ok.mean()),
        "pearson": float(np.corrcoef(norms, ok.astype(np.float64))[0, 1]) if varied else float("nan"),
        "spearman": float(stats.spearmanr(norms, ok).statistic) if varied else float("nan"),
        "auroc_norm_as_certainty": metrics.uncertainty_auroc(-norms, ok) if varied else float("nan"),
        "bins": bins,
    }


def extreme_indices(norms: np.ndarray, k: int, labels: np.ndarray | None = None,
                    label: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the k lowest norms, ascending; of the k highest, descending), among all samples or
    those with `labels == label`; ties by index (stable sort)."""
    norms = np.asarray(norms)
    pool = np.arange(norms.shape[0]) if labels is None else np.flatnonzero(np.asarray(labels) == label)
    order = pool[np.argsort(norms[pool], kind="stable")]
    k = min(k, order.size)
    high = pool[np.argsort(-norms[pool], kind="stable")]
    return order[:k], high[:k]


# ----------------------------------------------------------------------------------------------------
# jax.grad side: the run's own similarity


def _kernel(config) -> tuple[Any, bool, str]:
    """(similarity fn, whether the temperature is inside the kernel, description) of the run's EL kernel,
    evaluated in closed form with the exact log C_p."""
    from probdml import similarity

    name = config.loss.get("similarity", "cosine")
    options = dict(config.loss.get("similarity_options", {}) or {})
    inside = similarity.TEMPERATURE_INSIDE.get(name, lambda o: False)(options)
    if name == "el_nivmf":
        form = similarity.EL_NIVMF_COMPAT_PRESET["form"] if options.get("compat") else options.get(
            "form", "reference_linear")
        if form != "reference_linear":
            raise ValueError(f"the analytic forms need the reference_linear nivMF; the run uses form {form!r}")
        chosen = {"form": "reference_linear", "estimator": "closed_form", "normalizer": "exact",
                  "temperature_placement": "inside" if inside else "outside"}
    else:
        chosen = {"normalizer": "exact"}
    described = f"{name}({', '.join(f'{k}={v}' for k, v in sorted(chosen.items()))})"
    return similarity.get_similarity(name, **chosen), inside, described


def norm_roles(sim_fn, proxy_bundle: dict, w: Array, e: Array, labels: Array, temperature: float, inside: bool,
               factors: Sequence[float] = KAPPA_FACTORS) -> dict[str, Any]:
    """The norm's two roles on embeddings e [N, D] with labels [N] (float64 recommended): jax.grad of the
    posterior entropy H(kappa mu) w.r.t. kappa and of the per-image loss w.r.t. e, against
    `analytic_entropy_slope` / `analytic_loss_gradient`, at the embeddings and with every kappa scaled by
    each of `factors` (direction fixed)."""
    t_in, t_out = (temperature, 1.0) if inside else (1.0, temperature)

    def logits(x):
        return sim_fn({"embedding": x}, proxy_bundle, temperature=temperature).similarity / t_out

    def entropy_at(kappa, mu):
        return posterior_entropy(logits((kappa * mu)[None]))[0]

    def loss_at(x, y):
        z = logits(x[None])[0]
        return jax.nn.logsumexp(z) - z[y]

    @jax.jit
    def at_scale(f):
        """Everything at kappa -> f kappa: one compiled program for all factors."""
        x = e * f
        kappa = jnp.linalg.norm(x, axis=-1)
        log_pi = jax.nn.log_softmax(logits(x), axis=-1)
        g_jax = jax.vmap(jax.grad(loss_at))(x, labels)
        return {
            "kappa": kappa,
            "entropy": -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1),
            "dh_jax": jax.vmap(jax.grad(entropy_at))(kappa, x / kappa[:, None]),
            "dh_analytic": analytic_entropy_slope(log_pi, analytic_logit_kappa_slope(x, w, t_in, t_out)),
            "g_jax": g_jax,
            "g_analytic": analytic_loss_gradient(x, w, log_pi, labels, t_in, t_out),
            "grad_mu_norm": tangential_gradient_norm(x, g_jax),
        }

    sweep = {"kappa_factor": list(factors), "mean_kappa": [], "mean_entropy": [], "mean_grad_e_norm": [],
             "mean_grad_mu_norm": [], "fraction_entropy_decreasing": []}
    dev_h, dev_g = [], []
    at_data = None
    for f in (1.0, *factors):
        r = jax.device_get(at_scale(jnp.asarray(f, e.dtype)))
        dev_h.append(max_relative_deviation(r["dh_jax"], r["dh_analytic"]))
        dev_g.append(max_relative_deviation(r["g_jax"], r["g_analytic"]))
        if at_data is None:
            at_data = r
            continue
        sweep["mean_kappa"].append(float(np.mean(r["kappa"])))
        sweep["mean_entropy"].append(float(np.mean(r["entropy"])))
        sweep["mean_grad_e_norm"].append(float(np.mean(np.linalg.norm(r["g_jax"], axis=-1))))
        sweep["mean_grad_mu_norm"].append(float(np.mean(r["grad_mu_norm"])))
        sweep["fraction_entropy_decreasing"].append(float(np.mean(r["dh_jax"] < 0)))
    k_np = np.asarray(at_data["kappa"])
    grad_norm = np.linalg.norm(at_data["g_jax"], axis=-1)
    return {
        "temperature": {
            "spearman_kappa_entropy": float(stats.spearmanr(k_np, at_data["entropy"]).statistic),
            "fraction_entropy_decreasing": float(np.mean(at_data["dh_jax"] < 0)),
            "max_rel_dev_entropy_slope": float(max(dev_h)),
        },
        "gradient_scale": {
            "spearman_kappa_grad_e_norm": float(stats.spearmanr(k_np, grad_norm).statistic),
            "spearman_kappa_grad_mu_norm": float(stats.spearmanr(k_np, at_data["grad_mu_norm"]).statistic),
            "max_rel_dev_loss_gradient": float(max(dev_g)),
        },
        "sweep": sweep,
        "_points": {"kappa": k_np, "entropy": at_data["entropy"], "dh_jax": at_data["dh_jax"],
                    "dh_analytic": at_data["dh_analytic"], "grad_e_norm": grad_norm,
                    "grad_analytic_norm": np.linalg.norm(at_data["g_analytic"], axis=-1)},
    }


def load_checkpoint(config, workdir: str):
    """(model, restored TrainState) of the latest readable checkpoint in `workdir`; the state's structure
    comes from `jax.eval_shape` of the initialisation (nothing is computed or compiled)."""
    from probdml import checkpointing, data, models, objective, optim, train

    train_ds = data.load_split(config.data, train.selection(config).train_split)  # the split it trained on
    model = models.build_model(config.model)
    obj = objective.build_objective(config.loss, train_ds.num_classes, config.model.embed_dim)

    def init():
        init_key, loss_key = jax.random.split(jax.random.key(config.seed))
        variables = model.init(init_key, jnp.zeros((1, *train_ds.image_shape), jnp.float32), train=False)
        params = {"model": variables["params"], "loss": obj.init(loss_key)}
        return train.TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                                opt_state=optim.make_optimizer(config.optim, params).init(params),
                                batch_stats=variables.get("batch_stats", {}))

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), jax.eval_shape(init))
    mngr = checkpointing.manager(workdir, int(config.keep_checkpoints))
    state = checkpointing.restore_latest(mngr, like)
    mngr.close()
    if state is None:
        raise FileNotFoundError(f"no readable checkpoint under {os.path.join(workdir, 'checkpoints')}")
    return model, state, train_ds


# ----------------------------------------------------------------------------------------------------
# A run


def analyze(workdir: str, out_dir: str, *, num_samples: int = 512, num_shown: int = 8, classes_shown: int = 4,
            seed: int = 0, plots: bool = True) -> dict[str, Any]:
    """Norm analysis of the latest checkpoint in `workdir` (an EL-nivMF or EL-vMF run); writes
    <out_dir>/nivmf_norms.json (and the PNGs of the module docstring) and returns the same dict."""
    from probdml import data, evaluate, metrics, objective, parallel
    from probdml.analysis.gradients import read_run_config

    config = read_run_config(workdir)
    name = config.loss.get("similarity", "cosine")
    if name not in ANALYSED_SIMILARITIES:
        raise ValueError(f"the run's similarity is {name!r}; this analysis needs one of "
                         f"{', '.join(ANALYSED_SIMILARITIES)}")
    sim_fn, inside, described = _kernel(config)
    model, state, train_ds = load_checkpoint(config, workdir)
    test_ds = data.load_split(config.data, "test")
    mesh = parallel.make_mesh(1)
    variables = {"params": state.params["model"], **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
    apply = jax.jit(lambda x: model.apply(variables, x, train=False))
    batch = int(config.eval.batch_size)

    test_outputs = evaluate.embed(apply, config.data, test_ds, batch, mesh)
    test = test_outputs["embedding"]
    test_labels = np.asarray(test_ds.labels)
    norms = np.linalg.norm(test.astype(np.float64), axis=-1)
    _, idx = metrics.knn(test, None, 1, metric=evaluate.knn_metric(config.eval.metric), mesh=mesh)
    correct = test_labels[idx[:, 0]] == test_labels
    by_norm = norm_correctness(norms, correct)

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(train_ds), size=min(num_samples, len(train_ds)), replace=False))
    train_emb = evaluate.embed(apply, config.data, train_ds.take(pick), batch, mesh)["embedding"]
    train_labels = train_ds.contiguous_labels()[pick]
    loss_params = jax.device_get(state.params["loss"])
    kappas = objective.proxy_concentrations(config.loss, loss_params)
    temperature = float(np.exp(loss_params["temperature"])) if "temperature" in loss_params else float(
        config.loss.temperature)
    with jax.enable_x64(True):
        proxies = jnp.asarray(loss_params["proxies"], jnp.float64)
        kappas64 = jnp.asarray(kappas, jnp.float64)
        bundle = {"embedding": proxies, ("kappas" if kappas64.ndim == 2 else "kappa"): kappas64}
        roles = norm_roles(sim_fn, bundle, natural_proxies(proxies, kappas64), jnp.asarray(train_emb, jnp.float64),
                           jnp.asarray(train_labels), temperature, inside)
    points = roles.pop("_points")

    result = {
        "step": int(state.step),
        "analysed_similarity": described,
        "temperature": temperature,
        "temperature_inside": bool(inside),
        "eval_metric": config.eval.metric,
        "test": {"count": int(norms.size), "norm": {"mean": float(norms.mean()), "min": float(norms.min()),
                                                    "max": float(norms.max())}, **by_norm,
                 "uncertainty": evaluate.uncertainty_evaluation(test_outputs, test_ds, config.eval, mesh,
                                                                vmf=evaluate.vmf_embedding(config))},
        "train_sample": {"count": int(pick.size), **roles},
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "nivmf_norms.json"), "w") as f:
        json.dump(result, f, indent=1)
    if plots:
        _plot_extremes(os.path.join(out_dir, "norm_extremes.png"), test_ds, norms, test_labels, correct, num_shown,
                       classes_shown)
        _plot_correctness(os.path.join(out_dir, "norm_vs_correctness.png"), by_norm)
        _plot_role(os.path.join(out_dir, "temperature_role.png"), roles["sweep"], "mean_entropy",
                   "mean class-posterior entropy (nats)", points["dh_analytic"], points["dh_jax"], "dH/dkappa")
        _plot_role(os.path.join(out_dir, "gradient_scale_role.png"), roles["sweep"], "mean_grad_e_norm",
                   "mean |dL/de|", points["grad_analytic_norm"], points["grad_e_norm"], "|dL/de|",
                   extra="mean_grad_mu_norm")
    return result


# ----------------------------------------------------------------------------------------------------
# Plots


def _thumbnail(ds, i: int) -> np.ndarray:
    if hasattr(ds, "images"):
        return np.asarray(ds.images[i])
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(ds.source[i])).convert("RGB")
    img.thumbnail((128, 128))
    return np.asarray(img)


def _plot_extremes(path, ds, norms, labels, correct, k, classes_shown) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = np.unique(labels)
    classes = classes[np.linspace(0, len(classes) - 1, min(classes_shown, len(classes))).round().astype(int)]
    rows = [("all", extreme_indices(norms, k))]
    rows += [(f"class {c}", extreme_indices(norms, k, labels, c)) for c in classes]
    fig = Figure(figsize=(1.1 * 2 * k + 1.0, 1.3 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 2 * k, squeeze=False)
    for r, (title, (low, high)) in enumerate(rows):
        cells = list(low) + [None] * (k - len(low)) + list(high) + [None] * (k - len(high))
        for c, i in enumerate(cells):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if i is None:
                ax.axis("off")
                continue
            img = _thumbnail(ds, int(i))
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
            ax.set_title(f"{norms[i]:.3g}", fontsize=7, color="green" if correct[i] else "red")
            for spine in ax.spines.values():
                spine.set_color("green" if correct[i] else "red")
        axes[r, 0].set_ylabel(title, fontsize=8)
    fig.suptitle(f"test images: {k} lowest norms (left, ascending) | {k} highest (right, descending); "
                 "green = nearest neighbour correct", fontsize=9)
    fig.savefig(path, dpi=110)


def _figure(width: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_correctness(path, by_norm) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    bins = by_norm["bins"]
    ax.plot(bins["mean_norm"], bins["recall@1"], marker="o")
    ax.set_xlabel("embedding norm kappa (quantile-bin mean)")
    ax.set_ylabel("recall@1 in bin")
    ax.set_title(f"Pearson {by_norm['pearson']:.3f}, Spearman {by_norm['spearman']:.3f}, "
                 f"AUROC {by_norm['auroc_norm_as_certainty']:.3f}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def _plot_role(path, sweep, key, ylabel, analytic, jax_values, quantity, extra: str = "") -> None:
    fig = _figure(9.0)
    left, right = fig.subplots(1, 2)
    factors = sweep["kappa_factor"]
    left.plot(factors, sweep[key], marker="o", label=key)
    if extra:
        left.plot(factors, sweep[extra], marker="s", label=extra)
        left.legend(fontsize=8)
    left.set_xscale("log", base=2)
    left.set_xticks(factors[::2], [f"{f:g}" for f in factors[::2]])
    unit = sweep["mean_kappa"][0] / factors[0]
    left.set_xlabel(f"kappa factor (each image's kappa scaled, direction fixed; mean kappa {unit:.3g} at 1)")
    left.set_ylabel(ylabel)
    left.grid(alpha=0.3)
    right.scatter(analytic, jax_values, s=6)
    lo, hi = float(np.min(analytic)), float(np.max(analytic))
    right.plot([lo, hi], [lo, hi], color="gray", lw=0.8)
    right.set_xlabel(f"{quantity}, analytic (specs/nivmf.md section 5)")
    right.set_ylabel(f"{quantity}, jax.grad")
    right.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------------------------
# Command line


def _fail(message: str) -> None:
    print(f"nivmf_norms: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_workdir(workdir: str | None) -> str:
    """The workdir if it holds a run (config.json and checkpoints/), else a ValueError saying what is missing."""
    if not workdir:
        raise ValueError("--workdir is required: the directory of a training run")
    if not os.path.isdir(workdir):
        raise ValueError(f"workdir does not exist or is not a directory: {workdir}")
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise ValueError(f"no config.json in {workdir}: not a probdml run directory")
    ckpt = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt) or not any(d.isdigit() for d in os.listdir(ckpt)):
        raise ValueError(f"no checkpoint under {ckpt}")
    return workdir


def main(argv: Sequence[str]) -> None:
    from absl import flags, logging

    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    try:
        workdir = check_workdir(f.workdir)
    except ValueError as e:
        _fail(str(e))
    logging.set_verbosity(logging.WARNING)
    out = f.out or os.path.join(workdir, "nivmf_norms")
    try:
        result = analyze(workdir, out, num_samples=f.num_samples, num_shown=f.num_shown,
                         classes_shown=f.classes_shown, seed=f.seed)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e).splitlines()[0])
    sample = result["train_sample"]
    print(json.dumps({"out": os.path.abspath(out), "step": result["step"],
                      "test_recall@1": result["test"]["recall@1"], "pearson": result["test"]["pearson"],
                      "auroc_norm_as_certainty": result["test"]["auroc_norm_as_certainty"],
                      "max_rel_dev_entropy_slope": sample["temperature"]["max_rel_dev_entropy_slope"],
                      "max_rel_dev_loss_gradient": sample["gradient_scale"]["max_rel_dev_loss_gradient"]}, indent=1))


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "The training run's directory (config.json, checkpoints/).")
    flags.DEFINE_string("out", "", "Output directory (default: <workdir>/nivmf_norms).")
    flags.DEFINE_integer("num_samples", 512, "Training images for the gradient analysis.")
    flags.DEFINE_integer("num_shown", 8, "Images of lowest and of highest norm shown per row.")
    flags.DEFINE_integer("classes_shown", 4, "Test classes shown in the per-class rows.")
    flags.DEFINE_integer("seed", 0, "Seed of the training-image sample.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
