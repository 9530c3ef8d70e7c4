"""probdml.analysis.nivmf_norms: the pure functions on hand-worked and closed-form cases, jax.grad of the
library kernels against the analytic forms, and the command line on a tiny trained digits run."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from probdml import similarity
from probdml.analysis import nivmf_norms as norms_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log_c(kappa, p):
    """log C_p(kappa) by scipy: nu log k - (p/2) log 2pi - log ive(nu, k) - k."""
    nu = p / 2 - 1
    kappa = np.asarray(kappa, np.float64)
    return nu * np.log(kappa) - p / 2 * np.log(2 * np.pi) - np.log(scipy.special.ive(nu, kappa)) - kappa


def numpy_logits(e, w, a, t_in, t_out):
    """z_c = [a_c / t_in + log C_p(|e|) - log C_p(|e + w_c / t_in|)] / t_out, numpy + scipy."""
    p = e.shape[-1]
    kt = np.linalg.norm(e[:, None, :] + w[None] / t_in, axis=-1)
    return (a[None] / t_in + log_c(np.linalg.norm(e, axis=-1), p)[:, None] - log_c(kt, p)) / t_out


def central_difference(f, x, h=1e-5):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[idx] = h
        g[idx] = (f(x + d) - f(x - d)) / (2 * h)
    return g


@pytest.fixture
def x64():
    with jax.enable_x64(True), fast_compile():
        yield


@contextlib.contextmanager
def fast_compile():
    """XLA with most optimisations off: compile time dominates these small programs."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


def _case(seed=0, n=3, c=4, p=6):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, p)) * 3.0
    w = rng.normal(size=(c, p)) * 2.0
    a = rng.normal(size=c)
    labels = rng.integers(0, c, n)
    return e, w, a, labels


@pytest.mark.parametrize("t_in,t_out", [(1.0, 0.5), (0.5, 1.0)])
def test_analytic_derivatives_match_finite_differences(x64, t_in, t_out):
    e, w, a, labels = _case()
    kappa = np.linalg.norm(e, axis=-1)
    mu = e / kappa[:, None]
    got_slope = np.asarray(norms_mod.analytic_logit_kappa_slope(jnp.asarray(e), jnp.asarray(w), t_in, t_out))
    want_slope = np.stack([
        (numpy_logits((kappa[i] + 1e-5) * mu[i:i + 1], w, a, t_in, t_out)
         - numpy_logits((kappa[i] - 1e-5) * mu[i:i + 1], w, a, t_in, t_out))[0] / 2e-5 for i in range(len(e))])
    np.testing.assert_allclose(got_slope, want_slope, rtol=1e-6, atol=1e-8)

    z = numpy_logits(e, w, a, t_in, t_out)
    log_pi = z - scipy.special.logsumexp(z, axis=1, keepdims=True)
    got_grad = np.asarray(norms_mod.analytic_loss_gradient(jnp.asarray(e), jnp.asarray(w), jnp.asarray(log_pi),
                                                    jnp.asarray(labels), t_in, t_out))
    for i in range(len(e)):
        def loss(x, i=i):
            zi = numpy_logits(x[None], w, a, t_in, t_out)[0]
            return scipy.special.logsumexp(zi) - zi[labels[i]]
        np.testing.assert_allclose(got_grad[i], central_difference(loss, e[i]), rtol=1e-6, atol=1e-8)


def test_entropy_slope_two_classes_closed_form(x64):
    """z(kappa) = kappa (x1, x2): H = binary entropy of p = sigmoid(kappa d), d = x1 - x2, so
    dH/dkappa = -d^2 kappa p (1 - p)."""
    x1, x2, kappa = 0.7, -0.4, 3.0
    z = jnp.array([[kappa * x1, kappa * x2]])
    d = x1 - x2
    p = 1 / (1 + math.exp(-kappa * d))
    got = float(norms_mod.analytic_entropy_slope(jax.nn.log_softmax(z), jnp.array([[x1, x2]]))[0])
    assert got == pytest.approx(-d * d * kappa * p * (1 - p), rel=1e-12)
    h = float(norms_mod.posterior_entropy(z)[0])
    assert h == pytest.approx(-p * math.log(p) - (1 - p) * math.log(1 - p), rel=1e-12)
    assert float(norms_mod.posterior_entropy(jnp.zeros((1, 5)))[0]) == pytest.approx(math.log(5), rel=1e-12)


def test_norm_correctness_hand_case():
    out = norms_mod.norm_correctness(np.array([1.0, 2.0, 3.0, 4.0]), np.array([False, False, True, True]), num_bins=2)
    assert out["recall@1"] == 0.5
    assert out["pearson"] == pytest.approx(2 / math.sqrt(5), rel=1e-12)
    assert out["spearman"] == pytest.approx(2 / math.sqrt(5), rel=1e-12)
    assert out["auroc_norm_as_certainty"] == 1.0
    assert out["bins"]["edges"] == [1.0, 2.5, 4.0]
    assert out["bins"]["recall@1"] == [0.0, 1.0] and out["bins"]["count"] == [2, 2]
    tie = norms_mod.norm_correctness(np.array([1.0, 1.0, 2.0]), np.array([True, False, True]), num_bins=1)
    assert tie["auroc_norm_as_certainty"] == pytest.approx(0.75)  # pairs (c1, w): tie 1/2; (c3, w): 1
    unit = norms_mod.norm_correctness(1.0 + 1e-8 * np.arange(4.0), np.array([False, True, False, True]), num_bins=2)
    assert all(math.isnan(unit[k]) for k in ("pearson", "spearman", "auroc_norm_as_certainty"))  # normalised
    with pytest.raises(ValueError, match="equal length"):
        norms_mod.norm_correctness(np.ones(3), np.ones(2, bool))


def test_extremes_tangential_and_deviation():
    norms = np.array([3.0, 1.0, 2.0, 5.0, 4.0])
    low, high = norms_mod.extreme_indices(norms, 2)
    assert low.tolist() == [1, 2] and high.tolist() == [3, 4]
    low, high = norms_mod.extreme_indices(norms, 2, np.array([0, 1, 0, 1, 0]), 0)
    assert low.tolist() == [2, 0] and high.tolist() == [4, 0]
    assert float(norms_mod.tangential_gradient_norm(jnp.array([[2.0, 0.0]]), jnp.array([[1.0, 1.0]]))[0]) == 2.0
    assert norms_mod.max_relative_deviation(np.array([1.1, 2.0]), np.array([1.0, 2.0])) == pytest.approx(0.1)
    assert norms_mod.max_relative_deviation(np.array([[3.0, 4.0]]), np.array([[3.0, 0.0]])) == pytest.approx(4 / 3)
    w = norms_mod.natural_proxies(jnp.array([[3.0, 4.0]]), jnp.array([[2.0, 10.0]]))
    np.testing.assert_allclose(w, [[1.2, 8.0]])
    np.testing.assert_allclose(norms_mod.natural_proxies(jnp.array([[3.0, 4.0]]), jnp.array([5.0])), [[3.0, 4.0]])


@pytest.mark.parametrize("name,inside", [("el_nivmf", False), ("el_nivmf", True), ("el", False)])
def test_jax_grad_of_library_kernels_equals_analytic_forms(x64, name, inside):
    """norm_roles differentiates probdml.similarity's kernels with jax.grad; in float64 they agree with
    the section-5 forms to round-off at every kappa of the sweep."""
    rng = np.random.default_rng(1)
    p, c, n = 8, 5, 6
    proxies = jnp.asarray(rng.normal(size=(c, p)))
    kappas = jnp.asarray(rng.uniform(2, 12, (c, p)) if name == "el_nivmf" else rng.uniform(2, 12, c))
    bundle = {"embedding": proxies, ("kappas" if name == "el_nivmf" else "kappa"): kappas}
    opts = {"temperature_placement": "inside" if inside else "outside"} if name == "el_nivmf" else {}
    sim_fn = similarity.get_similarity(name, **opts)
    e = jnp.asarray(rng.normal(size=(n, p)) * 4)
    labels = jnp.asarray(rng.integers(0, c, n))
    out = norms_mod.norm_roles(sim_fn, bundle, norms_mod.natural_proxies(proxies, kappas), e, labels, 0.3, inside,
                        factors=(0.5, 2.0))
    assert out["temperature"]["max_rel_dev_entropy_slope"] < 1e-9
    assert out["gradient_scale"]["max_rel_dev_loss_gradient"] < 1e-9
    assert out["sweep"]["mean_kappa"][1] == pytest.approx(4 * out["sweep"]["mean_kappa"][0])
    # the temperature role: scaling kappa up sharpens the class posterior on average
    assert out["sweep"]["mean_entropy"][1] < out["sweep"]["mean_entropy"][0]


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, digits_data_dir):
    from configs import digits_nivmf
    from probdml import train

    config = digits_nivmf.get_config()
    config.data.data_dir = digits_data_dir
    config.model.widths, config.model.hidden, config.model.embed_dim = (8, 16), 32, 16
    config.num_steps, config.log_every, config.eval_every, config.checkpoint_every = 10, 10, 10, 10
    config.eval.clustering = False
    workdir = str(tmp_path_factory.mktemp("nivmf_run") / "run")
    with fast_compile():
        train.train_and_evaluate(config, workdir)
    return workdir


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    return subprocess.run([sys.executable, "-m", "probdml.analysis.nivmf_norms", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_end_to_end(trained_workdir, tmp_path):
    out = str(tmp_path / "out")
    proc = _cli(f"--workdir={trained_workdir}", f"--out={out}", "--num_samples=48", "--num_shown=3",
                "--classes_shown=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for png in ("norm_extremes.png", "norm_vs_correctness.png", "temperature_role.png", "gradient_scale_role.png"):
        assert os.path.getsize(os.path.join(out, png)) > 1000
    with open(os.path.join(out, "nivmf_norms.json")) as f:
        result = json.load(f)
    assert result["step"] == 10 and result["train_sample"]["count"] == 48
    with open(os.path.join(trained_workdir, "final_metrics.json")) as f:
        final = json.load(f)
    test = result["test"]
    assert test["recall@1"] == pytest.approx(final["recall@1"])  # the same 1-NN correctness as the evaluation
    assert sum(test["bins"]["count"]) == test["count"]
    assert -1 <= test["pearson"] <= 1 and 0 <= test["auroc_norm_as_certainty"] <= 1
    # the trainer's R-AUROC of the model's own uncertainty (-||e||) is the analysis' AUROC of the norm
    assert test["uncertainty"]["r_auroc/model"] == pytest.approx(test["auroc_norm_as_certainty"], abs=1e-12)
    assert test["uncertainty"]["r_auroc/model"] == pytest.approx(final["r_auroc/model"], abs=5e-3)
    assert result["train_sample"]["temperature"]["max_rel_dev_entropy_slope"] < 1e-6
    assert result["train_sample"]["gradient_scale"]["max_rel_dev_loss_gradient"] < 1e-6
    assert result["analysed_similarity"].startswith("el_nivmf(")
    assert json.loads(proc.stdout)["step"] == 10


def test_cli_errors_are_one_line(tmp_path):
    proc = _cli(f"--workdir={tmp_path / 'missing'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"nivmf_norms: error: workdir does not exist or is not a directory: "
                                                f"{tmp_path / 'missing'}"]
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no checkpoint under"):
        norms_mod.check_workdir(str(tmp_path))
    with pytest.raises(ValueError, match="--workdir is required"):
        norms_mod.check_workdir(None)
