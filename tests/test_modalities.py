"""One table of task and modality names; the manifest's modality order wins wherever an order is derived."""

from __future__ import annotations

import pytest

import mmgen_edge
from mmgen_edge.config import ModelConfig
from mmgen_edge.runtime import modalities as names


def test_one_table_and_what_derives_from_it():
    assert names.TASK_MODALITY == {"rgb": "rgb", "depth": "depth", "normals": "normal", "segmentation": "mask"}
    assert {m: t for t, m in names.TASK_MODALITY.items()} == names.MODALITY_TASK
    assert names.RELEASE_MODALITIES == ModelConfig.model_fields["modalities"].default == mmgen_edge.MODALITIES == ("rgb", "depth", "normal", "mask")
    assert names.PERCEPTION_TASKS == names.CONDITION_TASKS == ("depth", "normals", "segmentation")
    assert names.PERCEPTION_MODALITIES == ("depth", "normal", "mask")
    assert names.task_modality("normals") == "normal" and names.modality_task("mask") == "segmentation"
    with pytest.raises(ValueError, match=r"unknown task 'normal'; choose from \['rgb', 'depth', 'normals', 'segmentation'\]"):
        names.task_modality("normal")
    with pytest.raises(ValueError, match="unknown modality 'lidar'"):
        names.modality_task("lidar")


def test_derived_lists_follow_the_given_manifest_order():
    order = ("mask", "rgb", "normal", "depth")
    assert names.perception_modalities(order) == ("mask", "normal", "depth")
    assert names.perception_tasks(order) == ("segmentation", "normals", "depth")
    assert names.condition_tasks(order) == ("segmentation", "normals", "depth")
