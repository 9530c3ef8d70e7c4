"""IDML end to end: the official compat formula, uncertainty-head gradients (paper vs compat), warm-up,
the configs, the gradient analysis (closed forms vs mpmath, the checks, the CLI on a digits run)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
import pytest

from probdml import models, objective, optim, parallel, recipes, similarity, train
from probdml.analysis import gradients
from probdml.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digits_idml(variant=""):
    from configs import digits_idml

    config = digits_idml.get_config(variant)
    config.model.widths = (8, 16)
    config.model.hidden = 32
    config.model.embed_dim = 16
    config.model.uncertainty_dim = 16
    return config


# ----------------------------------------------------------------------------------------------------
# Compat mode: the official formula


def test_compat_proxy_anchor_equals_official_formula_hand_computed():
    """s = 1 - (1 - cos) exp(-(||u^||^2 + 4) / (5 ||x^ - p||^2)) with u^ = u/|u| and raw proxies p,
    inside ProxyAnchor (margin 0.1, alpha 32), worked out by hand on 2-d inputs."""
    config = _digits_idml("compat")
    assert config.model.uncertainty_l2_normalize
    with jax.enable_x64(True):
        obj = objective.build_objective(config.loss, 2, 2)
        proxies = jnp.array([[0.0, 2.0], [2.0, 0.0]])  # raw, norm 2
        # the compat model normalises x and u (the official --l2-norm 1): x^ = (0.6, 0.8), (1, 0); |u^|^2 = 1
        outputs = {"embedding": jnp.array([[0.6, 0.8], [1.0, 0.0]]),
                   "uncertainty": jnp.array([[0.0, 1.0], [-math.sqrt(0.5), math.sqrt(0.5)]])}  # beta + 4 = 5
        labels = jnp.array([0, 1])
        loss, _ = obj.apply({"proxies": proxies}, outputs, labels, jax.random.key(0))
        # cos(x^_i, p^_c): [[0.8, 0.6], [0, 1]]; ||x^_i - p_c||^2: [[1.8, 2.6], [5, 1]]; exp(-5 / (5 d))
        s = np.array([[1 - 0.2 * math.exp(-1 / 1.8), 1 - 0.4 * math.exp(-1 / 2.6)],
                      [1 - 1.0 * math.exp(-1 / 5.0), 1.0]])
        pos = 0.5 * (math.log1p(math.exp(-32 * (s[0, 0] - 0.1))) + math.log1p(math.exp(-32 * (s[1, 1] - 0.1))))
        neg = 0.5 * (math.log1p(math.exp(32 * (s[1, 0] + 0.1))) + math.log1p(math.exp(32 * (s[0, 1] + 0.1))))
        np.testing.assert_allclose(float(loss), pos + neg, rtol=1e-12)
        sim = similarity.get_similarity("introspective", **config.loss.similarity_options)(
            outputs, {"embedding": proxies}).similarity
        np.testing.assert_allclose(sim, s, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------
# Uncertainty-head gradients and the warm-up


def _batch(seed=0, n=16, classes=4):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
            "label": np.repeat(np.arange(classes), n // classes).astype(np.int32)}


def test_uncertainty_head_gets_gradients_in_paper_mode_and_is_inert_in_compat_mode():
    """docs/methods/idml.md, D1: with u L2-normalised, beta = |u^|^2 = 1 and the head's gradient is ~1e-11 x the
    semantic head's; in paper mode (u raw) it is of the same order."""
    batch = _batch()
    setups = []
    for variant in ("paper", "compat"):
        config = _digits_idml(variant)
        model = models.build_model(config.model)
        obj = objective.build_objective(config.loss, 4, config.model.embed_dim)
        setups.append((model, obj))

    @jax.jit
    def head_gradient_norms(keys):
        norms = []
        for (model, obj), key in zip(setups, keys):
            params = {"model": model.init(key, batch["image"][:1])["params"], "loss": obj.init(key)}

            def loss(p, model=model, obj=obj):
                out = model.apply({"params": p["model"]}, batch["image"])
                return obj.apply(p["loss"], out, batch["label"], key)[0]

            grads = jax.grad(loss)(params)["model"]
            norms.append({k: optax.tree.norm(grads[k]) for k in ("embedding", "uncertainty")})
        return norms

    paper, compat = jax.device_get(head_gradient_norms([jax.random.key(0), jax.random.key(0)]))
    assert paper["uncertainty"] > 1e-3 * paper["embedding"] > 0
    assert 0 <= compat["uncertainty"] < 1e-6 * compat["embedding"]


def test_warmup_freezes_backbone_and_uncertainty_head_only():
    config = _digits_idml()
    config.optim.frozen_until = {"backbone": 2, "uncertainty": 2}
    setup = train.create_setup(config, parallel.make_mesh(1), 4, (8, 8, 1))
    state = setup.state
    history = [jax.device_get(state.params)]
    for step in range(3):
        state, _ = setup.train_step(state, _batch(step))
        history.append(jax.device_get(state.params))

    def moved(a, b, group):
        tree_a = a["loss"]["proxies"] if group == "proxies" else a["model"][group]
        tree_b = b["loss"]["proxies"] if group == "proxies" else b["model"][group]
        return [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b))]

    for t in (0, 1):  # warm-up steps
        assert not any(moved(history[t], history[t + 1], "backbone"))
        assert not any(moved(history[t], history[t + 1], "uncertainty"))
        assert all(moved(history[t], history[t + 1], "embedding")) and all(moved(history[t], history[t + 1], "proxies"))
    for group in ("backbone", "uncertainty", "embedding", "proxies"):
        assert all(moved(history[2], history[3], group)), group


# ----------------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("name,train_images,lr,step_epochs,gamma", [
    ("cub200_idml", 5864, 6e-4, 5, 0.5), ("cars196_idml", 8054, 2.5e-4, 10, 0.5), ("sop_idml", 59551, 6e-4, 10, 0.25),
])
def test_retrieval_configs_follow_the_protocol(name, train_images, lr, step_epochs, gamma):
    import importlib

    module = importlib.import_module(f"configs.{name}")
    spe = train_images // 120
    config = module.get_config()
    assert config.num_steps == 60 * spe and config.data.batch_size == 120
    assert config.model.backbone == "resnet50" and config.model.pooling == "avg+max" and config.model.frozen_bn_stats
    assert config.model.embed_dim == config.model.uncertainty_dim == 512 and not config.model.uncertainty_l2_normalize
    assert config.loss.name == "proxy_anchor" and config.loss.similarity == "introspective"
    assert config.loss.similarity_options.beta_form == "sumvec" and config.loss.similarity_options.beta_offset == 0.0
    assert config.mixup.enabled and config.mixup.alpha == 1.0 and config.mixup.clean_weight == 1.0
    assert dict(config.optim.frozen_until) == {"backbone": 5 * spe, "backbone_bn": 5 * spe, "uncertainty": 5 * spe}
    assert config.optim.lr_mults["proxies"] == 100.0 and config.optim.grad_clip_value == 10.0
    schedule = optim.learning_rate_schedule(config.optim, config.optim.learning_rate)
    for epoch in (0, step_epochs - 1, step_epochs, 3 * step_epochs + 1, 59):
        for step in (epoch * spe, (epoch + 1) * spe - 1):  # torch StepLR stepped once per epoch
            np.testing.assert_allclose(schedule(step), lr * gamma ** (epoch // step_epochs), rtol=1e-6)
    compat = module.get_config("pa_compat")
    assert compat.model.uncertainty_l2_normalize
    assert {k: compat.loss.similarity_options[k] for k in similarity.ISM_COMPAT_PRESET} == similarity.ISM_COMPAT_PRESET
    with pytest.raises(ValueError, match="unknown IDML variant 'pb'; valid: pa, tsh"):
        module.get_config("pb")


def test_every_variant_builds_model_objective_and_optimizer(tmp_path):
    from configs import cub200_idml

    shapes = {}
    for variant in recipes.VARIANTS:
        config = cub200_idml.get_config(variant)
        with pytest.raises(ConfigError, match="model.pretrained is required"):
            train.validate_config(config, str(tmp_path / "w"))
        config.model.pretrained = ""
        train.validate_config(config, str(tmp_path / "w"))
        model = models.build_model(config.model)
        key = config.model.uncertainty_dim
        if key not in shapes:
            shapes[key] = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
        obj = objective.build_objective(config.loss, 100, config.model.embed_dim)
        params = {"model": shapes[key], "loss": jax.eval_shape(obj.init, jax.random.key(0))}
        optim.make_optimizer(config.optim, params)  # every named group exists
        labels = set(jax.tree.leaves(optim.param_groups(params, dict(config.optim.model_groups))))
        assert labels >= {"backbone", "backbone_bn", "embedding"}
        assert ("uncertainty" in labels) == (not variant.endswith("_baseline"))
        assert config.mixup.enabled == (not variant.endswith("_baseline"))


def test_cli_requires_pretrained_weights_for_the_paper_configs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "probdml.main", "--config=configs/sop_idml.py:pa_compat", f"--workdir={tmp_path / 'w'}"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "probdml: error: model.pretrained is required" in proc.stderr


# ----------------------------------------------------------------------------------------------------
# Gradient analysis


def _mp_partials(alpha, beta, tau, form, exponent=None):
    def d(a, b):
        e = a if exponent is None else mpmath.mpf(exponent)
        return a * mpmath.exp(-b / (tau * e)) if form == "relative" else a * mpmath.exp(-b / tau)

    a, b = mpmath.mpf(alpha), mpmath.mpf(beta)
    return float(mpmath.diff(lambda x: d(x, b), a)), float(mpmath.diff(lambda y: d(a, y), b))


@pytest.mark.parametrize("form,exponent", [("relative", None), ("absolute", None), ("relative", 1.7)])
def test_partials_match_mpmath(form, exponent):
    mpmath.mp.dps = 30
    points = [(0.3, 0.0), (0.3, 1.5), (1.2, 6.0), (0.05, 0.5), (2.0, 0.01)]
    a = np.array([p[0] for p in points])
    b = np.array([p[1] for p in points])
    expected = np.array([_mp_partials(x, y, 5.0, form, exponent) for x, y in points])
    closed = gradients.analytic_partials(a, b, tau=5.0, ism_form=form,
                                         alpha_exponent=None if exponent is None else np.full(5, exponent))
    np.testing.assert_allclose(np.stack(closed, 1), expected, rtol=1e-12, atol=1e-300)
    with jax.enable_x64(True):
        auto = gradients.ism_partials(jnp.asarray(a), jnp.asarray(b), tau=5.0, ism_form=form,
                                      alpha_exponent=None if exponent is None else jnp.full(5, exponent))
        np.testing.assert_allclose(np.stack([np.asarray(g) for g in auto], 1), expected, rtol=1e-12)


def test_check_analytic_rejects_a_wrong_metric(monkeypatch):
    """The script's identities can fail: with alpha missing from the exponent of the relative form,
    jax.grad no longer gives (1 + r) e^{-r}."""
    def wrong(alpha, beta, *, tau=5.0, ism_form="relative", alpha_exponent=None, alpha_eps=1e-6):
        return alpha * jnp.exp(-beta / tau)

    monkeypatch.setattr(similarity, "introspective_distance", wrong)
    with pytest.raises(gradients.AnalysisCheckError, match=r"closed forms \(relative\)"):
        gradients.check_analytic()


def test_recall_by_uncertainty_and_mix_partners():
    labels = np.array([0, 0, 1, 1])
    # cosines: 0-1 0.995, 0-3 0.958, 1-3 0.925, 2-1 0.100, 2-0 0, 2-3 -0.287: 1-NN 0->1, 1->0 (right),
    # 2->1, 3->0 (wrong)
    emb = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, -0.3]])
    res = gradients.recall_by_uncertainty(emb, labels, np.array([0.1, 0.2, 0.3, 0.4]), num_bins=2)
    assert res["count"] == [2, 2] and res["recall@1"] == [1.0, 0.0]
    np.testing.assert_allclose(res["mean_uncertainty"], [0.15, 0.35])
    partners = gradients.mix_partners(np.array([0, 0, 1, 2, 2]), seed=3)
    assert np.all(np.array([0, 0, 1, 2, 2])[partners] != np.array([0, 0, 1, 2, 2]))
    with pytest.raises(ValueError, match="at least two classes"):
        gradients.mix_partners(np.array([1, 1]))


_ENV = {**os.environ, "PYTHONPATH": ROOT, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}  # small runs: compilation dominates


@pytest.fixture(scope="module")
def digits_idml_run(digits_data_dir, tmp_path_factory):
    """configs/digits_idml.py through the CLI: the default network, 100 steps, one evaluation at the end."""
    workdir = tmp_path_factory.mktemp("idml") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "probdml.main", "--config=configs/digits_idml.py", f"--workdir={workdir}",
         f"--config.data.data_dir={digits_data_dir}", "--config.num_steps=100", "--config.eval_every=100",
         "--config.checkpoint_every=100", "--config.log_every=50", "--config.eval.clustering=False",
         "--config.selection.split="],
        cwd=ROOT, env=_ENV, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_gradient_analysis_cli_on_a_digits_run(digits_idml_run):
    """The CLI restores the run (config from config.json), passes its analytic checks, and finds mixed
    images more uncertain than clean ones (the paper's section 4.4.14)."""
    out = digits_idml_run / "analysis"
    proc = subprocess.run(
        [sys.executable, "-m", "probdml.analysis.gradients", f"--workdir={digits_idml_run}", "--num_samples=256"],
        cwd=ROOT, env=_ENV, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "analysis.json") as f:
        result = json.load(f)
    assert result["step"] == 100 and result["references"] == "proxies"
    with open(digits_idml_run / "final_metrics.json") as f:
        final = json.load(f)
    for key in ("r_auroc/model", "r_auroc/nn_similarity", "r_auroc/norm", "recall@1/reject20"):
        assert result["test_uncertainty"][key] == pytest.approx(final[key], abs=5e-3)  # same step, re-embedded
    assert result["mean_uncertainty"]["mixed"] > result["mean_uncertainty"]["clean"] > 0
    curve = result["uncertainty_vs_lambda"]["mean_uncertainty"]
    assert curve[5] > max(curve[0], curve[-1])  # lam = 0.5 above both clean ends
    h = result["analytic_checks"]["h_at_r"]
    assert abs(h["1"] - 2 * math.exp(-1)) < 1e-12
    pos = result["pairs"]["mixed"]["positive"]
    assert 0 < pos["h"]["p10"] <= pos["h"]["mean"] <= 1.0
    assert all(v["max_rel_grad_diff"] <= 1e-10 for v in result["analytic_checks"]["zero_uncertainty_gradient_equivalence"].values())
    for png in ("h_surface.png", "gradient_scales.png", "uncertainty_vs_lambda.png", "recall_by_uncertainty.png"):
        assert (out / png).stat().st_size > 1000


@pytest.mark.slow
def test_digits_idml_run_reports_r_auroc_of_its_uncertainty(digits_idml_run):
    """final_metrics.json carries R-AUROC of ||u||^2, of the nearest-neighbour similarity and of the norm, equal
    to sklearn's AUROC on the restored checkpoint's test embeddings with a brute-force leave-one-out 1-NN."""
    from sklearn.metrics import roc_auc_score

    from probdml import evaluate

    with open(digits_idml_run / "final_metrics.json") as f:
        record = json.load(f)
    assert record["step"] == 100 and record["split"] == "test" and "selection" not in record
    config = gradients.read_run_config(str(digits_idml_run))
    setup, state, _, test_ds = gradients.load_run(config, str(digits_idml_run))
    out = evaluate.embed(lambda x: setup.model.apply({"params": state.params["model"]}, x, train=False),
                         config.data, test_ds, 512)
    e = out["embedding"].astype(np.float64)
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (e / np.linalg.norm(e, axis=1, keepdims=True)).T
    np.fill_diagonal(cos, -np.inf)
    nn = np.argmax(cos, axis=1)
    wrong = test_ds.labels[nn] != test_ds.labels
    u2 = np.sum(out["uncertainty"].astype(np.float64) ** 2, axis=1)
    assert record["recall@1"] == pytest.approx(1.0 - wrong.mean(), abs=2e-3)  # float32 near-ties may flip
    assert record["r_auroc/model"] == pytest.approx(roc_auc_score(wrong, u2), abs=5e-3)
    assert record["r_auroc/nn_similarity"] == pytest.approx(roc_auc_score(wrong, -cos.max(axis=1)), abs=5e-3)
    assert record["r_auroc/norm"] == pytest.approx(roc_auc_score(wrong, -out["embedding_norm"]), abs=5e-3)
    for p in (10, 20, 50):
        assert 0.0 <= record[f"recall@1/reject{p}"] == record[f"recall@1/reject{p}/model"] <= 1.0
