"""EL-nivMF and the vMF kernels against independent computations (docs/methods/nivmf.md)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.integrate
import scipy.special

from probdml import losses, objective, similarity


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    """XLA with most optimisations off for this module: compiling dominates its small programs."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def log_c(kappa, p):
    """log C_p(kappa) by scipy: nu log k - (p/2) log 2pi - log(ive(nu, k)) - k."""
    nu = p / 2 - 1
    kappa = np.asarray(kappa, np.float64)
    return nu * np.log(kappa) - p / 2 * np.log(2 * np.pi) - np.log(scipy.special.ive(nu, kappa)) - kappa


def a_p(kappa, p):
    return scipy.special.ive(p / 2, kappa) / scipy.special.ive(p / 2 - 1, kappa)


def wood_cosines(rng, kappa, p, n):
    """n draws of t = mu.x for x ~ vMF(mu, kappa) on S^{p-1} (Wood 1994), plain numpy."""
    b = (p - 1) / (2 * kappa + math.sqrt(4 * kappa**2 + (p - 1) ** 2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (p - 1) * math.log(1 - x0**2)
    out = np.empty(0)
    while out.size < n:
        z = rng.beta((p - 1) / 2, (p - 1) / 2, 2 * n)
        w = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        ok = kappa * w + (p - 1) * np.log(1 - x0 * w) - c >= np.log(rng.uniform(size=2 * n))
        out = np.concatenate([out, w[ok]])
    return out[:n]


def reference_setup(p=128, kappa=40.0, seed=0):
    """An image vMF (mu = e1, kappa) and one nivMF proxy with random direction and kappas in [5, 10]."""
    rng = np.random.default_rng(seed)
    e = np.zeros(p)
    e[0] = kappa
    v = rng.normal(size=p) + 1.5 * np.eye(p)[0]
    kappas = rng.uniform(5.0, 10.0, p)
    return e, v, kappas


def reference_linear_terms(v, kappas, p):
    """a = log C_p(|w|) + sum log kappas - log|w| and w = K v/|v| (N-mc), numpy."""
    w = kappas * v / np.linalg.norm(v)
    wn = np.linalg.norm(w)
    return w, log_c(wn, p) + np.sum(np.log(kappas)) - np.log(wn)


def test_closed_form_el_equals_million_sample_monte_carlo():
    """log E_{x~vMF}[exp(a + w.x)] by 10^6 independent numpy samples (w.x = t w_par + sqrt(1-t^2) u |w_perp|,
    t by Wood's sampler, u the first coordinate of a uniform point on S^{p-2}) and by 2-D quadrature."""
    p, kappa = 128, 40.0
    e, v, kappas = reference_setup(p, kappa)
    w, a = reference_linear_terms(v, kappas, p)
    w_par, w_perp = w[0], np.linalg.norm(w[1:])
    rng = np.random.default_rng(1)
    n = 1_000_000
    t = wood_cosines(rng, kappa, p, n)
    assert abs(t.mean() - a_p(kappa, p)) < 5 * t.std() / math.sqrt(n)
    u = 2 * rng.beta((p - 2) / 2, (p - 2) / 2, n) - 1
    log_terms = a + t * w_par + np.sqrt(1 - t**2) * u * w_perp
    mc = scipy.special.logsumexp(log_terms) - math.log(n)
    se = np.std(np.exp(log_terms - log_terms.max())) / np.mean(np.exp(log_terms - log_terms.max())) / math.sqrt(n)

    def density(tt, uu):  # joint density of (t, u) times the integrand, up to the normalisers below
        return np.exp(kappa * tt + w_par * tt + w_perp * np.sqrt(1 - tt**2) * uu - (kappa + np.linalg.norm(w))) \
            * (1 - tt**2) ** ((p - 3) / 2) * (1 - uu**2) ** ((p - 4) / 2)

    num = scipy.integrate.dblquad(lambda uu, tt: density(tt, uu), -1, 1, -1, 1, epsabs=0, epsrel=1e-10)[0]
    log_norm_t = np.log(scipy.integrate.quad(lambda tt: np.exp(kappa * (tt - 1)) * (1 - tt**2) ** ((p - 3) / 2),
                                             -1, 1, epsabs=0, epsrel=1e-12)[0]) + kappa
    log_norm_u = scipy.special.betaln(0.5, (p - 2) / 2)
    quad = a + np.log(num) + kappa + np.linalg.norm(w) - log_norm_t - log_norm_u

    with jax.enable_x64(True):
        mu_b = jnp.asarray(v / np.linalg.norm(v))[None]
        closed = float(similarity.el_nivmf(jnp.asarray(e / kappa)[None], jnp.asarray([kappa]), mu_b,
                                           jnp.asarray(kappas)[None])[0, 0])
        default = float(similarity.get_similarity("el_nivmf")(
            {"embedding": jnp.asarray(e)[None]}, {"embedding": jnp.asarray(v)[None], "kappas": jnp.asarray(kappas)[None]},
        ).similarity[0, 0])
    assert abs(closed - quad) < 1e-6 * abs(quad)
    assert abs(closed - mc) < 4 * se + 1e-9
    assert default == closed  # the closed form is the default, and needs no PRNG key


def test_monte_carlo_estimator_is_vectorised_over_images_and_proxies():
    p, c = 16, 4
    rng = np.random.default_rng(0)
    e = jnp.asarray(rng.normal(size=(3, p)) * 3, jnp.float32)
    v = jnp.asarray(rng.normal(size=(c, p)), jnp.float32)
    kappas = jnp.asarray(rng.uniform(1, 6, (c, p)), jnp.float32)

    def sim(e_, k):
        fn = similarity.get_similarity("el_nivmf", estimator="monte_carlo", num_samples=5)
        return fn({"embedding": e_}, {"embedding": v, "kappas": kappas}, key=k).similarity

    small = jax.make_jaxpr(sim)(e[:1], jax.random.key(0))
    large = jax.make_jaxpr(sim)(jnp.tile(e, (8, 1)), jax.random.key(0))
    assert len(small.eqns) == len(large.eqns)  # one program for any batch: no per-image unrolling
    assert jax.jit(sim)(e, jax.random.key(1)).shape == (3, c)


def test_nivmf_kl_and_bhattacharyya_closed_forms_match_monte_carlo():
    """reference_linear closed forms vs probdml's sampler-based Monte Carlo (4e4 draws)."""
    p = 8
    rng = np.random.default_rng(2)
    e = jnp.asarray(rng.normal(size=(2, p)) * 2, jnp.float32)
    mu_a, kappa_a = similarity.l2_normalize(e), jnp.linalg.norm(e, axis=-1)
    mu_b = similarity.l2_normalize(jnp.asarray(rng.normal(size=(3, p)), jnp.float32))
    kappas = jnp.asarray(rng.uniform(1, 4, (3, p)), jnp.float32)

    @jax.jit
    def estimates():
        x = similarity.vmf_samples(jax.random.key(3), mu_a, kappa_a, 40000)
        return (similarity.nivmf_neg_kl_monte_carlo(x, mu_a, kappa_a, mu_b, kappas, form="reference_linear"),
                similarity.nivmf_neg_kl(mu_a, kappa_a, mu_b, kappas),
                similarity.nivmf_ppk_monte_carlo(x, mu_a, kappa_a, mu_b, kappas, rho=0.5, form="reference_linear"),
                similarity.nivmf_ppk(mu_a, kappa_a, mu_b, kappas, rho=0.5),
                similarity.nivmf_ppk_monte_carlo(x, mu_a, kappa_a, mu_b, kappas, rho=1.0, form="reference_linear"),
                similarity.el_nivmf(mu_a, kappa_a, mu_b, kappas))

    kl_mc, kl, b_mc, b, el_mc, el = estimates()
    np.testing.assert_allclose(kl_mc, kl, atol=0.03)
    np.testing.assert_allclose(b_mc, b, atol=0.03)
    np.testing.assert_allclose(el_mc, el, atol=0.03)
    # Independent check of the KL closed form: H(vMF) + a_c + A_p(k) mu.w_c with scipy's Bessel functions.
    w = np.asarray(kappas) * np.asarray(mu_b)
    wn = np.linalg.norm(w, axis=1)
    a = log_c(wn, p) + np.sum(np.log(np.asarray(kappas)), axis=1) - np.log(wn)
    k = np.asarray(kappa_a, np.float64)
    entropy = -log_c(k, p) - k * a_p(k, p)
    want = entropy[:, None] + a[None, :] + (a_p(k, p)[:, None] * np.asarray(mu_a)) @ w.T
    np.testing.assert_allclose(kl, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("opts", [
    {"temperature_placement": "inside"},
    {"compat": True},
    {"form": "exact", "estimator": "monte_carlo", "num_samples": 3},
])
def test_gradients_finite_at_extreme_concentrations_and_temperatures(opts):
    e = jnp.array([[1e-3, 0, 0, 0], [3e3, 1.0, 0, 0], [0, 50.0, 0, 0]])
    v = jnp.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    kappas = jnp.array([[0.1, 0.1, 0.1, 0.1], [1e3, 2.0, 50.0, 0.5]])
    fn = similarity.get_similarity("el_nivmf", **opts)

    def total(e_, v_, k_, t):
        return jnp.sum(fn({"embedding": e_}, {"embedding": v_, "kappas": k_}, key=jax.random.key(0),
                          temperature=t).similarity)

    grad = jax.jit(jax.grad(total, argnums=(0, 1, 2, 3)))
    for t in (1.0, 0.003):
        grads = grad(e, v, kappas, jnp.float32(t))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads), (opts, t)


def test_guidance_proxy_anchor_counts_batch_columns():
    sim = jnp.array([[0.5, -0.2], [0.3, 0.1], [0.0, 0.9]])
    labels = jnp.array([0, 0, 1])
    a, m = 32.0, 0.1
    pos0 = math.log1p(math.exp(-a * (0.5 - m)) + math.exp(-a * (0.3 - m)))
    pos1 = math.log1p(math.exp(-a * (0.9 - m)))
    neg0 = math.log1p(math.exp(a * (0.0 + m)))
    neg1 = math.log1p(math.exp(a * (-0.2 + m)) + math.exp(a * (0.1 + m)))
    cols = losses.proxy_anchor(sim, labels, positives_per="columns")
    assert float(cols) == pytest.approx((2 * pos0 + pos1) / 3 + (neg0 + neg1) / 2, rel=1e-5)
    assert float(losses.proxy_anchor(sim, labels)) == pytest.approx((pos0 + pos1) / 2 + (neg0 + neg1) / 2, rel=1e-5)


_el_nivmf = jax.jit(similarity.el_nivmf, static_argnames=("temperature_placement",))


def _cfg(**kw):
    base = dict(name="proxy_nca_pp", similarity="el_nivmf", temperature=0.5, learn_temperature=True,
                proxy_concentration=7.0)
    return ml_collections.ConfigDict({**base, **kw})


def test_objective_parameters_warm_start_and_switches():
    obj = objective.build_objective(_cfg(warm_start=True), 3, 4)
    params = obj.init(jax.random.key(0))
    np.testing.assert_allclose(jnp.linalg.norm(params["proxies"], axis=1), 7.0, rtol=1e-5)
    np.testing.assert_allclose(0.1 + jax.nn.softplus(params["proxy_kappa"]), 7.0, rtol=1e-5)
    assert params["proxy_kappa"].shape == (3, 4)
    assert float(params["temperature"]) == pytest.approx(math.log(0.5))
    emb = jnp.array([[1.0, 0, 0, 0], [3.0, 0, 0, 2.0], [0, 2.0, 0, 0]])
    warm = obj.warm_start(params, emb, jnp.array([0, 0, 1]))
    np.testing.assert_allclose(warm["proxies"][0], 7.0 * np.array([4.0, 0, 0, 2]) / math.sqrt(20), rtol=1e-6)
    np.testing.assert_allclose(warm["proxies"][1], [0, 7.0, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(warm["proxies"][2], params["proxies"][2])  # class without images
    assert objective.build_objective(_cfg(), 3, 4).warm_start is None

    fixed = objective.build_objective(_cfg(learn_temperature=False, kappa_param="clamp"), 3, 4)
    p2 = fixed.init(jax.random.key(0))
    assert "temperature" not in p2
    np.testing.assert_allclose(p2["proxy_kappa"], 7.0)
    out = {"embedding": jnp.array([[1.0, 2.0, 0.0, 0.5], [0.0, -1.0, 3.0, 0.0]])}
    labels = jnp.array([0, 2])
    g = jax.jit(jax.grad(lambda pr: fixed.apply(pr, out, labels, jax.random.key(0))[0]))(
        {**p2, "proxy_kappa": p2["proxy_kappa"].at[0, 0].set(0.05)})
    assert float(g["proxy_kappa"][0, 0]) == 0.0  # the official clamp: no gradient below kappa_min

    # ProxyNCA++ over the closed-form EL-nivMF, recomputed by hand.
    loss, aux = jax.jit(obj.apply)(params, out, labels, jax.random.key(0))
    kap = 0.1 + jax.nn.softplus(params["proxy_kappa"])
    e = out["embedding"]
    s = _el_nivmf(similarity.l2_normalize(e), jnp.linalg.norm(e, axis=-1),
                  similarity.l2_normalize(params["proxies"]), kap) / 0.5
    want = jnp.mean(jax.nn.logsumexp(s, axis=1) - s[jnp.arange(2), labels])
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert float(aux["temperature"]) == pytest.approx(0.5)


def test_temperature_inside_is_not_divided_again():
    cfg = _cfg(similarity_options={"temperature_placement": "inside"}, learn_temperature=False)
    obj = objective.build_objective(cfg, 3, 4)
    params = obj.init(jax.random.key(0))
    out = {"embedding": jnp.array([[1.0, 2.0, 0.0, 0.5], [0.0, -1.0, 3.0, 0.0]])}
    labels = jnp.array([0, 2])
    loss, _ = jax.jit(obj.apply)(params, out, labels, jax.random.key(0))
    kap = 0.1 + jax.nn.softplus(params["proxy_kappa"])
    e = out["embedding"]
    s = _el_nivmf(similarity.l2_normalize(e), jnp.linalg.norm(e, axis=-1),
                  similarity.l2_normalize(params["proxies"]), kap, temperature=0.5, temperature_placement="inside")
    want = jnp.mean(jax.nn.logsumexp(s, axis=1) - s[jnp.arange(2), labels])
    assert float(loss) == pytest.approx(float(want), rel=1e-5)


def test_compat_preset_and_bad_options():
    from probdml.errors import ConfigError

    assert similarity.TEMPERATURE_INSIDE["el_nivmf"]({"compat": True})
    e = jnp.array([[30.0, 5.0, 0.0, 0.0]])
    proxy = {"embedding": jnp.array([[1.0, 0.0, 0.0, 0.0]]), "kappas": jnp.full((1, 4), 5.0)}
    compat_fn = similarity.get_similarity("el_nivmf", compat=True)
    compat = jax.jit(lambda e_, k: compat_fn({"embedding": e_}, proxy, key=k, temperature=0.5).similarity)(
        e, jax.random.key(0))
    # the official estimator: 5 samples of the official sampler (evaluated at x/|x|, the official cosine),
    # quadratic log C_p fit (p != 128 -> the 512 fit) on a_c, T inside
    x = jax.jit(lambda e_, k: similarity.l2_normalize(similarity.official_vmf_sample(
        k, similarity.l2_normalize(e_), jnp.linalg.norm(e_, axis=-1), 5)))(e, jax.random.key(0))
    w = 5.0 * np.array([1.0, 0, 0, 0])
    a = 868 - 0.0002662 * 5.0 - 0.0009685 * 25.0 + 4 * math.log(5.0) - math.log(5.0)
    want = scipy.special.logsumexp((a + np.asarray(x)[:, 0] @ w) / 0.5) - math.log(5)
    assert float(compat[0, 0]) == pytest.approx(want, rel=1e-5)

    with pytest.raises(ConfigError, match="form"):
        similarity.get_similarity("kl_nivmf", form="ellipse")
    with pytest.raises(ConfigError, match="closed form"):
        similarity.get_similarity("bhattacharyya_nivmf", form="exact")
    fn = similarity.get_similarity("kl_nivmf", form="exact", estimator="monte_carlo")
    with pytest.raises(ValueError, match="PRNG key"):
        fn({"embedding": jnp.ones((1, 4))}, proxy)


@pytest.mark.parametrize("dim", [16, 128])
def test_digits_training_is_stable(tiny_config, tmp_path, dim):
    import json

    from configs import digits_nivmf
    from probdml import train

    config = digits_nivmf.get_config()
    config.data.data_dir = tiny_config.data.data_dir
    config.model.widths, config.model.hidden, config.model.embed_dim = (8, 16), 32, dim
    config.num_steps, config.log_every, config.eval_every, config.checkpoint_every = 20, 5, 20, 20
    config.eval.clustering = False
    metrics = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert np.isfinite(metrics["recall@1"]) and metrics["recall@1"] > 0.2
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train_rows = [r for r in rows if "train/loss" in r]
    assert train_rows and all(r["train/skipped_steps"] == 0 for r in train_rows)
    assert all(np.isfinite(r["train/loss"]) for r in train_rows)


@pytest.mark.parametrize("dataset", ["cub200", "cars196"])
def test_official_run_configs(dataset):
    from probdml import nivmf_recipes

    r128 = nivmf_recipes.nivmf_retrieval_config(dataset, "r128")
    official = nivmf_recipes.OFFICIAL_RUNS[(dataset, 128)]
    assert r128.model.embed_dim == 128 and r128.model.head == "vmf"
    assert r128.model.init_norm_multiplier == official["init_norm"]
    assert r128.loss.proxy_concentration == official["concentration"]
    assert r128.loss.guidance_weight == official["guidance"]
    assert dict(r128.optim.lr_mults) == {"proxies": official["proxy_lr"], "proxy_kappa": official["kappa_lr"],
                                   "temperature": 200.0}
    steps_per_epoch = nivmf_recipes.TRAIN_IMAGES[dataset] // 64
    assert r128.num_steps == official["epochs"] * steps_per_epoch
    assert r128.optim.boundaries == tuple(m * steps_per_epoch for m in official["milestones"])
    assert similarity.TEMPERATURE_INSIDE["el_nivmf"](dict(r128.loss.similarity_options))
    compat = nivmf_recipes.nivmf_retrieval_config(dataset, "r512_compat")
    assert dict(compat.loss.similarity_options) == {"compat": True} and compat.loss.kappa_param == "clamp"
    with pytest.raises(ValueError, match="run"):
        nivmf_recipes.nivmf_retrieval_config(dataset, "r256")


def test_figure5_grid_objectives_build_and_train():
    """Every Figure-5 preset's objective: finite loss and gradients, and a descent step lowers the loss."""
    from probdml import nivmf_recipes

    out = {"embedding": jnp.asarray(np.random.default_rng(0).normal(size=(6, 8)) * 3, jnp.float32)}
    labels = jnp.array([0, 0, 1, 1, 2, 2])
    for run in nivmf_recipes.run_names():
        if not run.startswith("fig5_") or run.endswith(("_d128", "_compat")):
            continue
        cfg = nivmf_recipes.nivmf_retrieval_config("cub200", run)
        assert cfg.model.embed_dim == 512 and cfg.data.batch_size == 106
        obj = objective.build_objective(cfg.loss, 3, 8)
        params = obj.init(jax.random.key(0))
        assert obj.warm_start is not None
        # eager: the primitives compiled for one cell serve the others (one jit per cell compiles 2x longer)
        f = jax.value_and_grad(lambda pr, e: obj.apply(pr, {"embedding": e}, labels, jax.random.key(1))[0],
                               argnums=(0, 1))
        loss, (g_p, g_e) = f(params, out["embedding"])
        assert np.isfinite(float(loss)), run
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves((g_p, g_e))), run
        loss2, _ = f(params, out["embedding"] - 1e-3 * g_e / (jnp.linalg.norm(g_e) + 1e-12))
        assert float(loss2) < float(loss), run
    gated = nivmf_recipes.nivmf_retrieval_config("cub200", "fig5_l2_iso", reference_gating=True)
    assert not gated.loss.warm_start and gated.model.init_norm_multiplier == 1.0
