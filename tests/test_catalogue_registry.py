"""The registries hold every loss and miner class pytorch-metric-learning exports (introspected from the
installed version, so a release that adds one fails here loudly)."""

from __future__ import annotations

import inspect

import pytest

from probdml import losses, mining

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

# Not losses or miners themselves: bases, combinators, and the two-view wrapper (the trainer feeds one view).
NOT_LOSSES = {
    "BaseMetricLossFunction", "BaseLossWrapper", "GenericPairLoss", "MultipleLosses", "SelfSupervisedLoss",
    "EmbeddingRegularizerMixin", "WeightRegularizerMixin",
}
NOT_MINERS = {"BaseMiner", "EmbeddingsAlreadyPackagedAsTriplets"}  # a base; a reshaping of given triplets


def _exported(module, suffix, excluded):
    return sorted(name for name, obj in vars(module).items()
                  if inspect.isclass(obj) and name.endswith(suffix) and name not in excluded)


def test_every_pml_loss_is_registered_under_its_snake_case_name():
    classes = _exported(pml_losses, "", NOT_LOSSES)  # every class, whatever its suffix (CrossBatchMemory)
    assert len(classes) >= 36
    registered = {**losses.LOSS_REGISTRY, **losses.WRAPPER_REGISTRY}
    missing = [c for c in classes if losses.pml_name_to_key(c) not in registered]
    assert not missing, f"PML losses and loss wrappers without a registry entry: {missing}"
    for cls in classes:
        assert registered[losses.pml_name_to_key(cls)].pml == cls
    wrappers = _exported(pml_losses, "", {"BaseLossWrapper", "SelfSupervisedLoss"})
    wrappers = [c for c in wrappers if issubclass(getattr(pml_losses, c), pml_losses.BaseLossWrapper)]
    assert [losses.pml_name_to_key(c) for c in wrappers] == sorted(losses.WRAPPER_REGISTRY)


def test_every_pml_miner_is_registered_under_its_snake_case_name():
    classes = _exported(pml_miners, "Miner", NOT_MINERS)
    assert len(classes) >= 9
    missing = [c for c in classes if losses.pml_name_to_key(c) not in mining.MINER_REGISTRY]
    assert not missing, f"PML miners without a registry entry: {missing}"
    for cls in classes:
        assert mining.MINER_REGISTRY[losses.pml_name_to_key(cls)][3] == cls


def test_snake_case_names():
    assert [losses.pml_name_to_key(c) for c in ("SubCenterArcFaceLoss", "NTXentLoss", "P2SGradLoss", "NPairsLoss",
                                                  "VICRegLoss", "HDCMiner", "ProxyNCALoss")] == [
        "sub_center_arc_face", "nt_xent", "p2s_grad", "n_pairs", "vic_reg", "hdc", "proxy_nca"]


def test_cross_batch_memory_exists():
    spec = losses.WRAPPER_REGISTRY["cross_batch_memory"]
    assert spec.obj is losses.CrossBatchMemory and spec.pml == "CrossBatchMemory"
    # it wraps only losses pytorch-metric-learning's CrossBatchMemory supports, and all of them are registered
    supported = {losses.pml_name_to_key(c) for c in pml_losses.CrossBatchMemory.supported_losses()}
    assert set(spec.wraps) <= supported and set(spec.wraps) <= set(losses.LOSS_REGISTRY)
