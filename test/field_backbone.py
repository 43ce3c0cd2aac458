"""The backbone the scale-field tests run on: the product's FastDepth (`load_backbone`) on the shared
weights, with per-frame results cached so that test files share one inference per frame."""

from __future__ import annotations

import functools

import pytest

from scale_field_ros.datasets import load_dataset, shared_root

MODEL = shared_root() / "models" / "fastdepth_224.tflite"


@functools.lru_cache(maxsize=1)
def backbone():
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is not present")
    from scale_field_ros.backbones import load_backbone

    return load_backbone("fastdepth", MODEL, runtime="onnxruntime")


@functools.lru_cache(maxsize=16)
def infer(dataset_name: str, index: int):
    frame = load_dataset(shared_root() / "data" / dataset_name).frame(index)
    return frame, backbone().infer(frame.rgb)
