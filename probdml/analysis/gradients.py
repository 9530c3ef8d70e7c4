"""IDML gradient and uncertainty analysis (specs/idml.md section 2), with jax.grad.

The introspective distance D = alpha e^{-r}, r = beta / (tau alpha') (relative form; alpha' = alpha
except in the official code's compat_raw_proxy mode) has

    dD/dalpha = H(alpha, beta) = (1 + r) e^{-r}        (alpha' = alpha; e^{-r} with alpha' held fixed)
    dD/dbeta  = -(1 / tau) e^{-r}                      (-(alpha / (tau alpha')) e^{-r} in general)

and, in the absolute form D = alpha e^{-beta/tau}: H = e^{-beta/tau}, dD/dbeta = -(alpha/tau) e^{-beta/tau}.
H lies in (0, 1] and equals 1 exactly at zero uncertainty, where the gradient of any loss on the
introspective metric equals that of the same loss on the base metric (the paper's section 3.5 claim).

Functions: `ism_partials` (jax.grad) and `analytic_partials` (closed forms), `h_surface`,
`check_analytic` (asserts the identities above, including the loss-gradient equality for several
losses), `pair_statistics` (alpha, beta, r, H, dD/dbeta of every sample-reference pair of real
embeddings), `mix_pairs` / `uncertainty_vs_lambda` / `recall_by_uncertainty` (clean vs mixed
uncertainty, accuracy by uncertainty bin), and `analyze_run` with its command line:

    python -m probdml.analysis.gradients --workdir=DIR [--config=configs/digits_idml.py] [--out=DIR/analysis]

which restores the latest checkpoint of a training run (its config from DIR/config.json unless
--config is given, with --config.<field> overrides), checks the identities on the run's embeddings,
and writes analysis.json and PNG plots (H surface, gradient scales of clean vs mixed pairs, mean
||u||^2 vs the mixing weight, recall@1 by uncertainty bin).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from probdml import evaluate, metrics, objective, similarity

Array = jax.Array

# ----------------------------------------------------------------------------------------------------
# Partial derivatives of the introspective distance


def _distance_fn(tau: float, ism_form: str, tied: bool) -> Callable[[Array, Array, Array], Array]:
    """D(alpha, beta, alpha') with alpha' = alpha when `tied`."""

    def d(alpha, beta, alpha_exponent):
        exponent = alpha if tied else alpha_exponent
        return similarity.introspective_distance(alpha, beta, tau=tau, ism_form=ism_form, alpha_exponent=exponent)

    return d


def ism_partials(
    alpha: Array,
    beta: Array,
    *,
    tau: float = 5.0,
    ism_form: str = "relative",
    alpha_exponent: Array | None = None,
) -> tuple[Array, Array]:
    """(dD/dalpha, dD/dbeta) by jax.grad, elementwise over broadcast alpha, beta (and alpha').

    alpha' = `alpha_exponent` is held fixed when given (the official code's raw-proxy exponent), else it is
    alpha itself (the paper's D = alpha e^{-beta / (tau alpha)})."""
    tied = alpha_exponent is None
    alpha, beta = jnp.asarray(alpha), jnp.asarray(beta)
    exponent = alpha if tied else jnp.asarray(alpha_exponent)
    alpha, beta, exponent = jnp.broadcast_arrays(alpha, beta, exponent)
    grad = jax.grad(_distance_fn(tau, ism_form, tied), argnums=(0, 1))
    flat = jax.vmap(grad)(alpha.ravel(), beta.ravel(), exponent.ravel())
    return flat[0].reshape(alpha.shape), flat[1].reshape(alpha.shape)


def analytic_partials(
    alpha: np.ndarray,
    beta: np.ndarray,
    *,
    tau: float = 5.0,
    ism_form: str = "relative",
    alpha_exponent: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Closed forms of (dD/dalpha, dD/dbeta) (module docstring), in float64 numpy."""
    alpha, beta = np.broadcast_arrays(np.asarray(alpha, np.float64), np.asarray(beta, np.float64))
    if ism_form == "absolute":
        decay = np.exp(-beta / tau)
        return decay, -alpha / tau * decay
    if alpha_exponent is None:
        r = beta / (tau * alpha)
        return (1.0 + r) * np.exp(-r), -np.exp(-r) / tau
    exponent = np.broadcast_to(np.asarray(alpha_exponent, np.float64), alpha.shape)
    r = beta / (tau * exponent)
    return np.exp(-r), -(alpha / (tau * exponent)) * np.exp(-r)


def h_surface(alphas: Sequence[float], betas: Sequence[float], *, tau: float = 5.0, ism_form: str = "relative") -> np.ndarray:
    """H(alpha, beta) = dD/dalpha on the grid [len(betas), len(alphas)], by jax.grad."""
    a, b = np.meshgrid(np.asarray(alphas, np.float64), np.asarray(betas, np.float64))
    with jax.enable_x64(True):
        h, _ = ism_partials(jnp.asarray(a), jnp.asarray(b), tau=tau, ism_form=ism_form)
        return np.asarray(h)


# ----------------------------------------------------------------------------------------------------
# Analytic checks


class AnalysisCheckError(AssertionError):
    """An identity of the gradient analysis does not hold."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AnalysisCheckError(message)


# Losses whose gradients at zero uncertainty are compared with the base metric's: (loss config, alpha_mode
# whose zero-uncertainty distance is the cosine similarity's distance for that loss).
# One of each kind: a proxy loss, a pair loss on similarities with a miner, a triplet loss on distances
# with a miner.
EQUIVALENCE_LOSSES: dict[str, tuple[dict, str]] = {
    "proxy_anchor": (dict(name="proxy_anchor"), "cos"),
    "multi_similarity": (dict(name="multi_similarity"), "cos"),
    "triplet_semihard": (dict(name="triplet", miner="semihard"), "euclid_norm"),
}


def loss_gradient_difference(
    loss: dict,
    alpha_mode: str,
    embeddings: Array,
    labels: Array,
    num_classes: int,
    *,
    ism_form: str = "relative",
    tau: float = 5.0,
    uncertainty_dim: int = 4,
    seed: int = 0,
) -> dict[str, float]:
    """Max |grad_IN - grad_E| / max|grad_E| of the loss w.r.t. the embeddings (and the proxies) between
    the introspective metric at zero uncertainty (u = 0 for every sample, proxies certain) and the base
    cosine metric; also the loss values and the norm of the gradient w.r.t. u."""
    base_cfg = ml_collections.ConfigDict({**loss, "similarity": "cosine"})
    ism_cfg = ml_collections.ConfigDict(
        {**loss, "similarity": "introspective",
         "similarity_options": dict(alpha_mode=alpha_mode, ism_form=ism_form, tau=tau)}
    )
    dim = embeddings.shape[1]
    base = objective.build_objective(base_cfg, num_classes, dim)
    ism = objective.build_objective(ism_cfg, num_classes, dim)
    key = jax.random.key(seed)
    params = base.init(key)
    u = jnp.zeros((embeddings.shape[0], uncertainty_dim), embeddings.dtype)

    def base_loss(p, e):
        return base.apply(p, {"embedding": e}, labels, key)[0]

    def ism_loss(p, e, u_):
        return ism.apply(p, {"embedding": e, "uncertainty": u_}, labels, key)[0]

    lb, (gpb, geb) = jax.value_and_grad(base_loss, argnums=(0, 1))(params, embeddings)
    li, (gpi, gei, gu) = jax.value_and_grad(ism_loss, argnums=(0, 1, 2))(params, embeddings, u)
    pairs = [(geb, gei)] + list(zip(jax.tree.leaves(gpb), jax.tree.leaves(gpi)))
    rel = max(float(jnp.max(jnp.abs(a - b)) / max(float(jnp.max(jnp.abs(a))), 1e-300)) for a, b in pairs)
    return {"loss_base": float(lb), "loss_ism": float(li), "max_rel_grad_diff": rel,
            "grad_u_norm": float(jnp.linalg.norm(gu))}


def check_analytic(tau: float = 5.0, *, rtol: float = 1e-10) -> dict[str, Any]:
    """Assert, in float64, the identities of the gradient analysis; returns the measured errors.

    1. jax.grad partials equal the closed forms (relative, absolute, and alpha' held fixed) on a grid.
    2. H = 1 at beta = 0 (both forms); 0 < H <= 1; H strictly decreasing in beta (relative, r <= 50).
    3. H at r = 1, 2, 3, 5 equals (1 + r) e^{-r} = 0.7358, 0.4060, 0.1991, 0.0404.
    4. At zero uncertainty, the gradient of each loss of EQUIVALENCE_LOSSES on the introspective metric
       equals its gradient on the cosine metric (relative and absolute forms), and the uncertainty
       gradient vanishes.
    Raises AnalysisCheckError naming the first identity that fails.
    """
    out: dict[str, Any] = {}
    with jax.enable_x64(True):
        alphas = np.geomspace(1e-3, 2.0, 25)
        betas = np.concatenate([[0.0], np.geomspace(1e-3, 20.0, 24)])
        a, b = np.meshgrid(alphas, betas)
        errors = {}
        for ism_form in ("relative", "absolute"):
            ga, gb = ism_partials(jnp.asarray(a), jnp.asarray(b), tau=tau, ism_form=ism_form)
            ea, eb = analytic_partials(a, b, tau=tau, ism_form=ism_form)
            errors[ism_form] = max(_rel_err(ga, ea), _rel_err(gb, eb))
        fixed = 0.5 + a  # alpha' held fixed (the official raw-proxy exponent)
        ga, gb = ism_partials(jnp.asarray(a), jnp.asarray(b), tau=tau, alpha_exponent=jnp.asarray(fixed))
        ea, eb = analytic_partials(a, b, tau=tau, alpha_exponent=fixed)
        errors["relative_fixed_exponent"] = max(_rel_err(ga, ea), _rel_err(gb, eb))
        out["autodiff_vs_closed_form_max_rel_err"] = errors
        for name, err in errors.items():
            _require(err <= rtol, f"jax.grad partials differ from the closed forms ({name}): rel err {err:.3g}")

        r = betas[:, None] / (tau * alphas[None, :])
        for ism_form in ("relative", "absolute"):
            h = h_surface(alphas, betas, tau=tau, ism_form=ism_form)
            _require(np.all(h[0] == 1.0), f"H != 1 at zero uncertainty ({ism_form}): {h[0].min()}..{h[0].max()}")
            # H > 0 where e^{-r} is representable (r <= 500)
            _require(np.all(h <= 1.0) and np.all(h[r <= 500] > 0), f"H outside (0, 1] ({ism_form})")
        h = h_surface(alphas, betas, tau=tau)
        strict = np.diff(h, axis=0)[(r[1:] <= 50)]
        _require(np.all(strict < 0), "H is not strictly decreasing in beta")
        table = {}
        for rv, expected in [(1, 0.7358), (2, 0.4060), (3, 0.1991), (5, 0.0404)]:
            hv = float(h_surface([0.5], [rv * tau * 0.5], tau=tau)[0, 0])
            table[str(rv)] = hv
            _require(abs(hv - expected) < 1e-4, f"H(r={rv}) = {hv:.5f}, expected {expected}")
        out["h_at_r"] = table

        rng = np.random.default_rng(0)
        num_classes = 4
        labels = jnp.asarray(np.repeat(np.arange(num_classes), 4), jnp.int32)
        embeddings = jnp.asarray(rng.normal(size=(16, 8)))
        equivalence = {}
        for ism_form in ("relative", "absolute"):
            for name, (loss, alpha_mode) in EQUIVALENCE_LOSSES.items():
                res = loss_gradient_difference(loss, alpha_mode, embeddings, labels, num_classes, ism_form=ism_form,
                                               tau=tau)
                equivalence[f"{name}/{ism_form}"] = res
                _require(abs(res["loss_base"] - res["loss_ism"]) <= 1e-12 * max(abs(res["loss_base"]), 1.0),
                         f"{name} ({ism_form}): loss at zero uncertainty differs from the base loss")
                _require(res["max_rel_grad_diff"] <= 1e-10,
                         f"{name} ({ism_form}): gradient at zero uncertainty differs from the base loss's "
                         f"(rel {res['max_rel_grad_diff']:.3g})")
                _require(res["grad_u_norm"] == 0.0, f"{name} ({ism_form}): nonzero uncertainty gradient at u = 0")
        out["zero_uncertainty_gradient_equivalence"] = equivalence
    return out


def _rel_err(x: Array, y: np.ndarray) -> float:
    """max |x - y| / max(|y|, 1e-250): relative error, with values below 1e-250 (XLA flushes float64
    subnormals to zero) compared absolutely."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-250)))


# ----------------------------------------------------------------------------------------------------
# Real embeddings


def resolve_ism_options(options: dict | None) -> dict:
    """The introspective metric's full options (defaults filled in, `compat` expanded)."""
    return similarity.resolve_options("introspective", dict(options or {}))


def pair_statistics(
    embeddings: Array,
    uncertainty: Array,
    references: Array,
    reference_uncertainty: Array | None,
    options: dict,
) -> dict[str, np.ndarray]:
    """alpha, alpha', beta, r, H = dD/dalpha and dD/dbeta [N, M] for every (sample, reference) pair under
    the introspective metric with `options` (a run's similarity_options). References are class proxies
    (`reference_uncertainty=None`: certain) or other samples. H is computed by jax.grad (alpha' held
    fixed in the compat_raw_proxy mode, else alpha' = alpha) and checked against its closed form."""
    opts = resolve_ism_options(options)
    def f64(x):
        return None if x is None else jnp.asarray(np.asarray(x, np.float64))

    with jax.enable_x64(True):
        terms = similarity.introspective_terms(
            f64(embeddings), f64(references), f64(uncertainty), f64(reference_uncertainty),
            alpha_mode=opts["alpha_mode"], beta_form=opts["beta_form"], beta_offset=opts["beta_offset"],
            uncertainty_l2norm=opts["uncertainty_l2norm"],
        )
        shape = terms.cos_distance.shape
        alpha = jnp.maximum(jnp.broadcast_to(terms.alpha, shape), opts["alpha_eps"])
        beta = jnp.broadcast_to(terms.beta, shape)
        raw = opts["alpha_mode"] == "compat_raw_proxy"
        exponent = jnp.maximum(jnp.broadcast_to(terms.alpha_exponent, shape), opts["alpha_eps"]) if raw else alpha
        h, g = ism_partials(alpha, beta, tau=opts["tau"], ism_form=opts["ism_form"],
                            alpha_exponent=exponent if raw else None)
        eh, eg = analytic_partials(np.asarray(alpha), np.asarray(beta), tau=opts["tau"], ism_form=opts["ism_form"],
                                   alpha_exponent=np.asarray(exponent) if raw else None)
        _require(_rel_err(h, eh) <= 1e-9 and _rel_err(g, eg) <= 1e-9,
                 "H or dD/dbeta of the real pairs differs from its closed form")
        r = beta / (opts["tau"] * exponent) if opts["ism_form"] == "relative" else beta / opts["tau"]
        return {k: np.asarray(v) for k, v in dict(alpha=alpha, alpha_exponent=exponent, beta=beta, r=r, h=h,
                                                  d_beta=g).items()}


def mix_partners(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each sample i, the index of a uniformly random sample of another class (its Mixup partner)."""
    labels = np.asarray(labels)
    if np.unique(labels).size < 2:
        raise ValueError("mixing partners of another class need at least two classes")
    rng = np.random.default_rng(seed)
    partners = np.empty(len(labels), np.int64)
    for i, y in enumerate(labels):
        others = np.flatnonzero(labels != y)
        partners[i] = others[rng.integers(len(others))]
    return partners


def squared_norms(u: np.ndarray) -> np.ndarray:
    """||u||^2 per row: IDML's uncertainty level."""
    u = np.asarray(u, np.float64)
    return np.sum(u * u, axis=-1)


def uncertainty_vs_lambda(
    apply_fn: Callable[[np.ndarray], dict], images: np.ndarray, partners: np.ndarray, lambdas: Sequence[float]
) -> np.ndarray:
    """Mean ||u||^2 of the images lam x + (1 - lam) x[partners] for each lam (lam = 1: the clean images)."""
    means = []
    for lam in lambdas:
        out = apply_fn(lam * images + (1.0 - lam) * images[partners])
        means.append(float(np.mean(squared_norms(out["uncertainty"]))))
    return np.asarray(means)


def recall_by_uncertainty(
    embeddings: np.ndarray, labels: np.ndarray, uncertainty_level: np.ndarray, num_bins: int = 5
) -> dict[str, list[float]]:
    """Leave-one-out recall@1 (cosine) of the queries in each quantile bin of `uncertainty_level`:
    {'bin_edges', 'mean_uncertainty', 'recall@1', 'count'} (bins from least to most uncertain).
    Dense N x N similarities: for analysis-sized sets."""
    x = np.asarray(embeddings, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    correct = labels[np.argmax(sim, axis=1)] == labels
    binned = metrics.accuracy_by_quantile_bin(uncertainty_level, correct, num_bins)
    return {"bin_edges": binned["edges"], "mean_uncertainty": binned["mean_score"], "recall@1": binned["accuracy"],
            "count": binned["count"]}


def _summary(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, np.float64).ravel()
    return {"mean": float(x.mean()), "median": float(np.median(x)), "p10": float(np.quantile(x, 0.1)),
            "p90": float(np.quantile(x, 0.9)), "count": int(x.size)}


# ----------------------------------------------------------------------------------------------------
# A training run


def load_run(config: ml_collections.ConfigDict, workdir: str):
    """(setup, restored state, train split, test split) of the latest checkpoint in `workdir`."""
    from probdml import checkpointing, data, parallel, train

    mesh = parallel.make_mesh(1)
    train_ds = data.load_split(config.data, train.selection(config).train_split)  # the split it trained on
    test_ds = data.load_split(config.data, "test")
    setup = train.create_setup(config, mesh, train_ds.num_classes, train_ds.image_shape)
    mngr = checkpointing.manager(workdir, int(config.keep_checkpoints))
    state = checkpointing.restore_latest(mngr, setup.state)
    mngr.close()
    if state is None:
        raise FileNotFoundError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')}")
    return setup, state, train_ds, test_ds


def analyze_run(
    config: ml_collections.ConfigDict,
    workdir: str,
    out_dir: str,
    *,
    num_samples: int = 512,
    seed: int = 0,
    plots: bool = True,
) -> dict[str, Any]:
    """Gradient and uncertainty analysis of the latest checkpoint of an IDML run; writes
    <out_dir>/analysis.json (and PNG plots) and returns the same dict.

    Samples: `num_samples` training images (clean), their mixes lam x + (1 - lam) x[pi] with lam ~ U(0, 1)
    per image and pi a random partner of another class (mixed). References: the class proxies when the loss has
    them (certain), else the clean samples. Reports the pair statistics (H, dD/dbeta) of positive and
    negative pairs, clean vs mixed; mean ||u||^2 clean vs mixed and against lam; recall@1 on the test
    classes by ||u||^2 quintile; and the analytic checks (`check_analytic`)."""
    from probdml.data.pipeline import normalize

    if config.loss.get("similarity", "cosine") != "introspective":
        raise ValueError(f"the run's similarity is {config.loss.get('similarity', 'cosine')!r}, not 'introspective'")
    setup, state, train_ds, test_ds = load_run(config, workdir)
    if not hasattr(train_ds, "images"):
        raise ValueError("analyze_run reads in-memory datasets (digits); image datasets are not supported")
    variables = {"params": state.params["model"], **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
    apply = jax.jit(lambda x: setup.model.apply(variables, x, train=False))

    def apply_fn(images):
        return jax.device_get(apply(jnp.asarray(images, jnp.float32)))

    rng = np.random.default_rng(seed)
    labels_all = train_ds.contiguous_labels()
    idx = np.sort(rng.choice(len(labels_all), size=min(num_samples, len(labels_all)), replace=False))
    images = normalize(train_ds.images[idx], config.data.mean, config.data.std)
    labels = labels_all[idx]
    perm = mix_partners(labels, seed)
    lam = rng.uniform(0.0, 1.0, size=(len(idx),) + (1,) * (images.ndim - 1)).astype(np.float32)
    clean = apply_fn(images)
    mixed = apply_fn(lam * images + (1.0 - lam) * images[perm])
    if "uncertainty" not in clean:
        raise ValueError("the model has no uncertainty head (model.uncertainty_dim = 0)")

    options = dict(config.loss.get("similarity_options", {}) or {})
    proxies = state.params["loss"].get("proxies")
    if proxies is not None:
        references, ref_u, ref_labels = jnp.asarray(proxies), None, np.arange(proxies.shape[0])
    else:
        references, ref_u, ref_labels = jnp.asarray(clean["embedding"]), jnp.asarray(clean["uncertainty"]), labels
    stats = {}
    for name, out, pos_of in (
        ("clean", clean, [labels]),
        ("mixed", mixed, [labels, labels[perm]]),
    ):
        p = pair_statistics(jnp.asarray(out["embedding"]), jnp.asarray(out["uncertainty"]), references, ref_u, options)
        positive = np.zeros(p["h"].shape, bool)
        for pl in pos_of:
            positive |= pl[:, None] == ref_labels[None, :]
        valid = np.ones_like(positive)
        if proxies is None:
            np.fill_diagonal(valid, name != "clean")
        stats[name] = {
            "uncertainty_sq_norm": _summary(squared_norms(out["uncertainty"])),
            "positive": {k: _summary(p[k][positive & valid]) for k in ("h", "d_beta", "beta", "alpha", "r")},
            "negative": {k: _summary(p[k][~positive & valid]) for k in ("h", "d_beta", "beta", "alpha", "r")},
        }
        stats[name]["_h_positive"] = p["h"][positive & valid]

    lambdas = np.linspace(0.0, 1.0, 11)
    u_curve = uncertainty_vs_lambda(apply_fn, images, perm, lambdas)
    test_images = normalize(test_ds.images, config.data.mean, config.data.std)
    test_out = apply_fn(test_images)
    by_bin = recall_by_uncertainty(test_out["embedding"], test_ds.contiguous_labels(),
                                   squared_norms(test_out["uncertainty"]))
    checks = check_analytic(float(resolve_ism_options(options)["tau"]))

    result = {
        "step": int(state.step),
        "similarity_options": resolve_ism_options(options),
        "references": "proxies" if proxies is not None else "samples",
        "mean_uncertainty": {"clean": stats["clean"]["uncertainty_sq_norm"]["mean"],
                             "mixed": stats["mixed"]["uncertainty_sq_norm"]["mean"]},
        "pairs": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in stats.items()},
        "uncertainty_vs_lambda": {"lambda": lambdas.tolist(), "mean_uncertainty": u_curve.tolist()},
        "test_recall_by_uncertainty": by_bin,
        "test_uncertainty": evaluate.uncertainty_evaluation({k: np.asarray(v) for k, v in test_out.items()},
                                                            test_ds, config.eval),
        "analytic_checks": checks,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "analysis.json"), "w") as f:
        json.dump(result, f, indent=1)
    if plots:
        tau = float(result["similarity_options"]["tau"])
        _plot_h_surface(os.path.join(out_dir, "h_surface.png"), tau, result["similarity_options"]["ism_form"])
        _plot_histograms(os.path.join(out_dir, "gradient_scales.png"),
                         {f"{k} images": np.log10(np.maximum(1.0 - stats[k]["_h_positive"], 1e-16))
                          for k in ("clean", "mixed")},
                         "log10(1 - H) per positive pair (H = dD/dalpha)",
                         "1 - H = how much the metric slows a pair's semantic gradient (H = 1: conventional DML); "
                         "further right = slowed more")
        _plot_line(os.path.join(out_dir, "uncertainty_vs_lambda.png"), lambdas, u_curve,
                   "mixing weight lambda (0 and 1 = an unmixed image)", "mean ||u||^2 (higher = less certain)",
                   "Mixup of test image pairs: an uncertainty head that learned ambiguity peaks at lambda = 0.5")
        bins = len(by_bin["recall@1"])
        _plot_line(os.path.join(out_dir, "recall_by_uncertainty.png"), np.arange(1, bins + 1),
                   np.asarray(by_bin["recall@1"]), "quintile of ||u||^2 (higher = less certain)",
                   "recall@1 (test classes)",
                   "Leave-one-out recall@1 per uncertainty quintile: a useful uncertainty slopes down",
                   xticks=(np.arange(1, bins + 1), ["1\nmost certain", *map(str, range(2, bins)), f"{bins}\nleast certain"]))
    return result


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_h_surface(path: str, tau: float, ism_form: str) -> None:
    alphas = np.linspace(0.02, 2.0, 100)
    betas = np.linspace(0.0, 10.0, 101)
    h = h_surface(alphas, betas, tau=tau, ism_form=ism_form)
    fig = _figure()
    ax = fig.add_subplot()
    im = ax.contourf(alphas, betas, h, levels=np.linspace(0.0, 1.0, 21))
    fig.colorbar(im, ax=ax, label="H = dD/dalpha")
    ax.set_xlabel("semantic distance alpha")
    ax.set_ylabel("uncertainty beta")
    ax.set_title(f"H(alpha, beta), tau = {tau:g} ({ism_form})")
    fig.supxlabel("H scales a pair's semantic gradient: 1 = conventional DML (beta = 0), lower = slower learning",
                  fontsize=8)
    fig.savefig(path, dpi=120)


def _plot_histograms(path: str, samples: dict[str, np.ndarray], xlabel: str, caption: str) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    for name, x in samples.items():
        ax.hist(np.asarray(x).ravel(), bins=40, alpha=0.5, density=True, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()
    fig.supxlabel(caption, fontsize=8, wrap=True)
    fig.savefig(path, dpi=120)


def _plot_line(path: str, x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, caption: str,
               xticks: tuple | None = None) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(x, y, marker="o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticks is not None:
        ax.set_xticks(*xticks)
    ax.grid(alpha=0.3)
    fig.supxlabel(caption, fontsize=8, wrap=True)
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------------------------
# Command line


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved as <workdir>/config.json."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: pass the run's --config")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    config = f.config if f.config is not None else read_run_config(f.workdir)
    out = f.out or os.path.join(f.workdir, "analysis")
    result = analyze_run(config, f.workdir, out, num_samples=f.num_samples, seed=f.seed)
    print(json.dumps({"out": os.path.abspath(out), "step": result["step"],
                      "mean_uncertainty": result["mean_uncertainty"],
                      "h_positive_mean": {k: result["pairs"][k]["positive"]["h"]["mean"] for k in ("clean", "mixed")},
                      "analytic_checks": "passed"}, indent=1))


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "The run's config file (default: <workdir>/config.json).")
    flags.DEFINE_string("workdir", None, "The training run's directory (its checkpoints/).")
    flags.DEFINE_string("out", "", "Output directory (default: <workdir>/analysis).")
    flags.DEFINE_integer("num_samples", 512, "Training images analysed (clean and mixed).")
    flags.DEFINE_integer("seed", 0, "Seed of the sample, the mixing weights and the pairing.")
    flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
