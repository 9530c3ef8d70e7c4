"""Validation-based model selection: the test split chooses nothing, and both test results are recorded."""

import json

import numpy as np
import pytest

from probdml import data, train
from probdml.errors import ConfigError


def _run(config, workdir, monkeypatch, relabel_test: bool) -> dict:
    real = data.load_split

    def load_split(data_cfg, split):
        ds = real(data_cfg, split)
        if split == "test" and relabel_test:  # the same images with the labels shuffled among them
            ds = type(ds)(images=ds.images, labels=np.random.default_rng(1).permutation(ds.labels))
        return ds

    monkeypatch.setattr(data, "load_split", load_split)
    return train.train_and_evaluate(config, workdir)


def test_test_labels_never_change_the_selected_checkpoint(tiny_config, tmp_path, monkeypatch):
    tiny_config.selection.split = "val"
    tiny_config.data.val_fraction = 0.4  # digits' 5 training classes: 3 train_sub, 2 val
    tiny_config.eval_every = 4
    tiny_config.eval.clustering = False
    a = _run(tiny_config, str(tmp_path / "a"), monkeypatch, relabel_test=False)
    b = _run(tiny_config, str(tmp_path / "b"), monkeypatch, relabel_test=True)
    assert a["selection"] == b["selection"]
    assert a["selection"]["split"] == "val" and a["selection"]["metric"] == "val/recall@1"
    assert a["selection"]["step"] in (4, 8, 12)
    assert a["recall@1"] != b["recall@1"]  # the relabelled test split does change the test numbers
    with open(tmp_path / "a" / "final_metrics.json") as f:
        record = json.load(f)
    assert record["step"] == 12 and record["split"] == "test"
    assert record["selection"] == a["selection"]
    assert set(record["selected"]) == {k for k, v in record.items() if isinstance(v, float)}
    rows = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    evaluated = [r for r in rows if any(k.startswith("val/") for k in r)]
    assert [r["step"] for r in evaluated] == [4, 8, 12]
    assert not any(k.startswith("test/") for r in rows if r["step"] < 12 for k in r)
    by_step = {r["step"]: r["val/recall@1"] for r in evaluated}
    assert record["selection"]["value"] == by_step[record["selection"]["step"]] == max(by_step.values())
    for key in ("r_auroc/nn_similarity", "r_auroc/norm", "recall@1/reject20"):
        assert key in record and key in record["selected"]


def test_unknown_selection_is_a_config_error(tiny_config, tmp_path):
    tiny_config.selection.split = "valid"
    with pytest.raises(ConfigError, match="selection.split 'valid'"):
        train.validate_config(tiny_config, str(tmp_path / "w"))
    tiny_config.selection.split = "val"
    tiny_config.selection.metric = "recall@3"
    with pytest.raises(ConfigError, match="selection.metric 'recall@3'.*recall@1"):
        train.validate_config(tiny_config, str(tmp_path / "w"))
