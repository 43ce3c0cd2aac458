"""The backbone the scale-field tests run on: the product's `load_backbone` when it is importable, else a
LiteRT reference run of the shared FastDepth file (ai-edge-litert is a test-only dependency) that also
returns a decoder feature map. Either way: real network output on real images."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from scale_field_ros.backbone import BackboneOutput, DepthKind, to_rgb8
from scale_field_ros.datasets import shared_root

MODEL = shared_root() / "models" / "fastdepth_224.tflite"


class _LiteRTReference:
    name = "fastdepth-litert-reference"
    runtime = "litert"

    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True, num_threads=1)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]["index"]
        self.out = self.it.get_output_details()[0]
        shapes = {d["index"]: d for d in self.it.get_tensor_details() if len(d["shape"]) == 4}
        # the decoder's 56x56 stage: the finest map with tens of channels
        self.feat = max((d for d in shapes.values() if 16 < d["shape"][3] <= 64), key=lambda d: d["shape"][1])

    def infer(self, rgb):
        import cv2

        rgb = to_rgb8(rgb)
        h, w = rgb.shape[:2]
        self.it.set_tensor(self.inp, cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA)[None])
        self.it.invoke()
        q = self.it.get_tensor(self.out["index"])[0, :, :, 0].astype(np.float32) * self.out["quantization"][0]
        s, z = self.feat["quantization"]
        f = (self.it.get_tensor(self.feat["index"])[0].astype(np.float32) - z) * s
        rel = cv2.resize(q, (w, h), interpolation=cv2.INTER_LINEAR)
        return BackboneOutput(rel, DepthKind.DEPTH, True, {"decoder": np.ascontiguousarray(f.transpose(2, 0, 1))})


@functools.lru_cache(maxsize=1)
def backbone():
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is not present")
    try:
        from scale_field_ros.backbones import load_backbone

        return load_backbone("fastdepth", MODEL)
    except ImportError:
        pytest.importorskip("ai_edge_litert")
        return _LiteRTReference(MODEL)


@functools.lru_cache(maxsize=16)
def infer(dataset_name: str, index: int):
    from scale_field_ros.datasets import load_dataset

    ds = load_dataset(shared_root() / "data" / dataset_name)
    frame = ds.frame(index)
    return frame, backbone().infer(frame.rgb)
