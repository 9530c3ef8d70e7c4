"""Input checks of every registered loss: wrong shapes, dtypes and label values raise one-line ValueErrors
naming the argument (hypothesis over the bad inputs), and valid inputs pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probdml import losses
from probdml.losses.registry import LOSS_REGISTRY

B, C = 6, 4
EXTRA = {"soft_triple": {"centers_per_class": 2}, "sub_center_arc_face": {"sub_centers": 2}}
COLUMNS = {"soft_triple": 2 * C, "sub_center_arc_face": 2 * C}
NAMES = sorted(n for n, spec in LOSS_REGISTRY.items() if spec.family != "self_supervised")
SETTINGS = settings(max_examples=15, deadline=None)


def _call(name, x, labels, **kw):
    return LOSS_REGISTRY[name].fn(x, labels, **EXTRA.get(name, {}), **kw)


def _arg(name):
    spec = LOSS_REGISTRY[name]
    return "sim" if spec.family == "proxy" or spec.reads == "similarity" else "dist"


def _good(name, b=B):
    cols = COLUMNS.get(name, C) if LOSS_REGISTRY[name].family == "proxy" else b
    x = np.random.default_rng(0).uniform(0.1, 0.9, size=(b, cols)).astype(np.float32)
    return x, np.arange(b, dtype=np.int32) % C


def _raises(name, x, labels, arg, **kw):
    """The call raises a one-line ValueError that starts with the loss's function name and names `arg`."""
    with pytest.raises(ValueError) as info:
        _call(name, x, labels, **kw)
    message = str(info.value)
    assert "\n" not in message and message.startswith(LOSS_REGISTRY[name].fn.__name__ + ": "), message
    assert f"{arg} must" in message, message
    return message


@pytest.mark.parametrize("name", NAMES)
def test_valid_inputs_pass_eagerly_and_traced(name):
    x, labels = _good(name)
    assert np.isfinite(float(_call(name, x, labels)))
    traced = jax.eval_shape(lambda a, y: _call(name, a, y), x, labels)
    assert traced.shape == () and traced.dtype == jnp.float32


@SETTINGS
@given(name=st.sampled_from(NAMES), shape=st.sampled_from([(B,), (B, 0), (0, C), (B, C, 1), ()]))
def test_matrix_of_wrong_rank_or_empty_raises(name, shape):
    _, labels = _good(name)
    message = _raises(name, np.zeros(shape, np.float32), labels, _arg(name))
    assert str(tuple(shape)) in message


@SETTINGS
@given(name=st.sampled_from(NAMES), bad=st.sampled_from(["column", "short", "long", "float", "matrix"]))
def test_labels_of_wrong_shape_or_dtype_raise(name, bad):
    x, labels = _good(name)
    labels = {"column": labels[:, None], "short": labels[:-1], "long": np.append(labels, 0),
              "float": labels.astype(np.float32), "matrix": np.stack([labels, labels])}[bad]
    message = _raises(name, x, labels, "labels")
    assert ("dtype" in message) == (bad == "float")


@SETTINGS
@given(name=st.sampled_from([n for n in NAMES if LOSS_REGISTRY[n].family == "proxy"]),
       offset=st.sampled_from([-3, -1, 0, 2]), where=st.integers(0, B - 1))
def test_proxy_labels_outside_the_proxies_raise_when_concrete(name, offset, where):
    x, labels = _good(name)
    labels = labels.copy()
    num_classes = x.shape[1] // COLUMNS.get(name, C) * C
    labels[where] = offset if offset < 0 else num_classes + offset
    message = _raises(name, x, labels, "labels")
    assert f"[0, {num_classes})" in message
    # traced labels cannot be checked (their values are unknown at trace time): no error there
    jax.eval_shape(lambda a, y: _call(name, a, y), x, labels)


@SETTINGS
@given(name=st.sampled_from([n for n in NAMES if LOSS_REGISTRY[n].family != "proxy"]),
       extra=st.integers(1, 3))
def test_pair_matrix_must_be_square(name, extra):
    x, labels = _good(name)
    wide = np.concatenate([x, np.zeros((B, extra), np.float32)], axis=1)
    message = _raises(name, wide, labels, _arg(name))
    assert "[B, B]" in message


@pytest.mark.parametrize("name", NAMES)
def test_sample_mask_and_integer_matrix_checked_also_under_jit(name):
    x, labels = _good(name)
    with pytest.raises(ValueError, match="sample_mask must have shape"):
        jax.eval_shape(lambda a, y: _call(name, a, y, sample_mask=jnp.ones((B + 1,), bool)), x, labels)
    with pytest.raises(ValueError, match="floating point"):
        _call(name, x.astype(np.int32), labels)


def test_mined_masks_and_triplets_checked():
    x, labels = _good("contrastive")
    with pytest.raises(ValueError, match="pos_mask must have shape \\[6, 6\\]"):
        losses.contrastive(x, labels, pos_mask=np.ones((B, B + 1), bool))
    with pytest.raises(ValueError, match="triplets must have shape \\[6, 6, 6\\]"):
        losses.triplet_margin(x, labels, triplets=np.ones((B, B), bool))
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\)"):
        losses.margin_loss(x, labels, beta=jnp.ones(3))
    with pytest.raises(ValueError, match="class_mask must have shape \\[4\\]"):
        losses.proxy_nca_pp(_good("proxy_nca_pp")[0], labels, class_mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\)"):
        losses.proxy_subsample_mask(jax.random.key(0), labels, 3, 0.5)


def test_label_free_losses_check_their_inputs():
    x = np.ones((B, 3), np.float32)
    with pytest.raises(ValueError, match="vic_reg: ref_embeddings must be \\[N, D\\] like embeddings with 6 rows"):
        losses.vic_reg(x, x[:-1])
    with pytest.raises(ValueError, match="vic_reg: embeddings must be a \\[N, D\\]"):
        losses.vic_reg(x[0], x[0])
    sim = np.eye(B, dtype=np.float32)
    with pytest.raises(ValueError, match="manifold: labels must lie in \\[0, 2\\)"):
        losses.manifold(sim, np.arange(B - 2) % 3, num_proxies=2)
    with pytest.raises(ValueError, match="manifold: sim must be a square"):
        losses.manifold(sim[:, :-1], np.zeros(B - 2, np.int32), num_proxies=2)
