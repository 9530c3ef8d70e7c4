"""Input checks of `similarity` and `metrics` (hypothesis over the bad inputs): concrete inputs with wrong
shapes, dtypes or NaN/inf raise one-line ValueErrors naming the argument; under jit a non-finite row gives
NaN similarities (never finite ones); `checks.checked` stops a jitted computation at the first NaN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental import checkify

from probdml import checks, metrics, similarity
from probdml.similarity.registry import PROXY_CONCENTRATION

N, M, D = 5, 3, 4
NAMES = ("cosine", "l2", "introspective", "el", "el_nivmf", "ppk_nivmf")
SETTINGS = settings(max_examples=12, deadline=None)
BAD_VALUES = st.sampled_from([np.nan, np.inf, -np.inf])


def _bundles(name):
    rng = np.random.default_rng(0)
    a = {"embedding": rng.normal(size=(N, D)).astype(np.float32) * 3}
    b = {"embedding": rng.normal(size=(M, D)).astype(np.float32) * 3}
    if name == "introspective":
        a["uncertainty"] = rng.normal(size=(N, D)).astype(np.float32)
    kind = PROXY_CONCENTRATION.get(name)
    if kind == "scalar":
        b["kappa"] = rng.uniform(1, 5, size=(M,)).astype(np.float32)
    if kind == "vector":
        b["kappas"] = rng.uniform(1, 5, size=(M, D)).astype(np.float32)
    return a, b


SIMS = {name: similarity.get_similarity(name) for name in NAMES}
JITTED = {name: jax.jit(lambda a, b, name=name: SIMS[name](a, b).similarity) for name in NAMES}


@SETTINGS
@given(name=st.sampled_from(NAMES), side=st.sampled_from("ab"), row=st.integers(0, M - 1),
       col=st.integers(0, D - 1), value=BAD_VALUES)
def test_non_finite_embedding_is_an_error_eagerly_and_nan_under_jit(name, side, row, col, value):
    a, b = _bundles(name)
    bundle = a if side == "a" else b
    bundle["embedding"][row, col] = value
    with pytest.raises(ValueError) as info:
        SIMS[name](a, b)
    message = str(info.value)
    assert "\n" not in message
    assert f"similarity {name!r}: {side}['embedding'] has 1 row(s) with NaN or inf (first: row {row})" in message
    sim = np.asarray(JITTED[name](a, b))
    bad = np.zeros((N, M), bool)
    if side == "a":
        bad[row, :] = True
    else:
        bad[:, row] = True
    assert np.isnan(sim[bad]).all()
    assert np.isfinite(sim[~bad]).all()


@SETTINGS
@given(name=st.sampled_from(NAMES), value=BAD_VALUES, row=st.integers(0, M - 1))
def test_non_finite_concentration_is_an_error(name, value, row):
    a, b = _bundles(name)
    field = {"scalar": "kappa", "vector": "kappas"}.get(PROXY_CONCENTRATION.get(name))
    if field is None:
        a, b = _bundles("el_nivmf")
        name, field = "el_nivmf", "kappas"
    b[field][row] = value
    with pytest.raises(ValueError, match=rf"b\['{field}'\] has 1 row\(s\) with NaN or inf \(first: row {row}\)"):
        SIMS[name](a, b)


@SETTINGS
@given(name=st.sampled_from(NAMES), case=st.sampled_from(["1d", "empty", "dim", "int", "kappas", "kappa", "3d"]))
def test_wrong_shapes_and_dtypes_name_the_bundle_field(name, case):
    a, b = _bundles(name)
    if case == "1d":
        a["embedding"], arg, what = a["embedding"][:, 0], "a['embedding']", "must be a non-empty [N, D] matrix"
    elif case == "empty":
        b["embedding"], arg, what = b["embedding"][:0], "b['embedding']", "must be a non-empty [M, D] matrix"
    elif case == "3d":
        a["embedding"], arg, what = a["embedding"][:, :, None], "a['embedding']", "must be a non-empty [N, D] matrix"
    elif case == "dim":
        b["embedding"], arg, what = b["embedding"][:, :2], "b['embedding']", f"must be [M, D] with {D} columns"
    elif case == "int":
        a["embedding"], arg, what = a["embedding"].astype(np.int32), "a['embedding']", "must be floating point"
    elif case == "kappas":
        b["kappas"], arg, what = np.ones((M, D + 1), np.float32), "b['kappas']", f"with {D} columns"
    else:
        b["kappa"], arg, what = np.ones((M + 1,), np.float32), "b['kappa']", f"must be [M] with N = {M}"
    with pytest.raises(ValueError) as info:
        SIMS[name](a, b)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"similarity {name!r}: {arg} "), message
    assert what in message, message


def test_valid_bundles_pass_eagerly_and_under_jit():
    for name in NAMES:
        a, b = _bundles(name)
        eager = np.asarray(SIMS[name](a, b).similarity)
        assert eager.shape == (N, M) and np.isfinite(eager).all()
        np.testing.assert_allclose(np.asarray(JITTED[name](a, b)), eager, rtol=1e-5, atol=1e-5)


def test_checked_mode_raises_inside_jit():
    """checks.checked: a NaN produced inside the jitted step, or an out-of-range proxy index, raises."""
    a, b = _bundles("cosine")

    def step(a_emb, labels):
        sim = SIMS["cosine"]({"embedding": jnp.log(a_emb)}, {"embedding": b["embedding"]}).similarity
        return jnp.sum(sim[jnp.arange(N), labels])

    labels = np.arange(N) % M
    good = np.abs(a["embedding"]) + 0.1
    fn = checks.checked(jax.jit(step))
    assert np.isfinite(float(fn(good, labels)))
    bad = good.copy()
    bad[2, 1] = -1.0  # log(-1) = NaN inside the jitted computation
    with pytest.raises(checkify.JaxRuntimeError, match="nan generated by primitive: log"):
        fn(bad, labels)
    with pytest.raises(checkify.JaxRuntimeError, match="out-of-bounds"):
        fn(good, labels + M)


# --- metrics ----------------------------------------------------------------------------------------


def _points(n=40, classes=4):
    rng = np.random.default_rng(1)
    y = np.arange(n) % classes
    return rng.normal(size=(n, D)).astype(np.float32) + y[:, None], y


@SETTINGS
@given(row=st.integers(0, 39), value=BAD_VALUES, metric=st.sampled_from(["cosine", "euclidean", "dot", "el_vmf"]))
def test_retrieval_metrics_refuse_non_finite_rows(row, value, metric):
    x, y = _points()
    x[row, 1] = value
    with pytest.raises(ValueError, match=rf"^retrieval_metrics: embeddings has 1 row\(s\) with NaN or inf \(first: row {row}\)"):
        metrics.retrieval_metrics(x, y, ks=(1,), metric=metric)
    with pytest.raises(ValueError, match=rf"^knn: queries has 1 row\(s\) with NaN or inf \(first: row {row}\)"):
        metrics.knn(x, None, 1, metric=metric)
    with pytest.raises(ValueError, match=r"^clustering_metrics: embeddings has 1 row"):
        metrics.clustering_metrics(x, y)


@SETTINGS
@given(n=st.integers(3, 40), extra=st.integers(0, 30))
def test_recall_at_k_needs_k_below_the_number_of_references(n, extra):
    x, y = _points(n, classes=3)
    k = n - 1 + extra
    if extra == 0:
        assert 0.0 <= metrics.retrieval_metrics(x, y, ks=(1, k))[f"recall@{k}"] <= 1.0
        return
    with pytest.raises(ValueError, match=rf"recall@{k} needs k <= n = {n - 1}"):
        metrics.retrieval_metrics(x, y, ks=(1, k))


@SETTINGS
@given(case=st.sampled_from(["float_labels", "2d_labels", "short_labels", "1d_embeddings", "ref_dim"]))
def test_retrieval_metrics_name_the_bad_argument(case):
    x, y = _points()
    kwargs, pattern = {}, ""
    if case == "float_labels":
        y, pattern = y.astype(np.float32), "labels must be integers"
    elif case == "2d_labels":
        y, pattern = y[:, None], "labels must be one-dimensional"
    elif case == "short_labels":
        y, pattern = y[:-1], "embeddings and labels must have the same number of samples, got 40 and 39"
    elif case == "1d_embeddings":
        x, pattern = x[:, 0], r"embeddings must be a non-empty \[N, D\] matrix"
    else:
        kwargs = {"reference_embeddings": x[:, :2], "reference_labels": y}
        pattern = rf"reference_embeddings must be \[N, D\] with {D} columns"
    with pytest.raises(ValueError, match=pattern):
        metrics.retrieval_metrics(x, y, ks=(1,), **kwargs)
