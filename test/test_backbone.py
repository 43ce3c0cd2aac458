"""Image validation and conversion at the backbone boundary (`to_rgb8`, `Backbone.infer`)."""

from __future__ import annotations

import numpy as np
import pytest

from scale_field_ros.backbone import BackboneOutput, DepthKind, ImageError, to_rgb8


@pytest.fixture(scope="module")
def rgb(nyu) -> np.ndarray:
    return nyu.frame(0).rgb


@pytest.fixture(scope="module")
def backbone(fastdepth_path):
    from scale_field_ros.backbones import load_backbone

    return load_backbone(model_path=fastdepth_path, runtime="torch", threads=1)


def test_grey_image_becomes_three_equal_channels(rgb):
    grey = rgb.mean(axis=2).astype(np.uint8)
    for image in (grey, grey[:, :, None]):
        out = to_rgb8(image)
        assert out.shape == (*grey.shape, 3) and out.dtype == np.uint8
        assert np.array_equal(out[:, :, 0], grey) and np.array_equal(out[:, :, 2], grey)


def test_rgba_drops_alpha_and_bgr_is_swapped(rgb):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    assert np.array_equal(to_rgb8(rgba), rgb)
    assert np.array_equal(to_rgb8(rgb[:, :, ::-1], channel_order="bgr"), rgb)


def test_sixteen_bit_and_float_are_rescaled(rgb):
    sixteen = rgb.astype(np.uint16) * 257
    assert np.array_equal(to_rgb8(sixteen), rgb)
    assert np.array_equal(to_rgb8(rgb.astype(np.float32) / 255.0), rgb)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 3), np.uint8), "outside the supported range"),
        (np.zeros((32, 32, 5), np.uint8), "1, 3 or 4 channels"),
        (np.full((32, 32, 3), np.nan, np.float32), "NaN"),
        (np.zeros((32, 32, 3), np.float32) + 2.0, r"\[0, 1\]"),
        (np.zeros((32, 32, 3), np.int64), "unsupported image dtype"),
        (np.zeros((2, 32, 32, 3), np.uint8), "HxW or HxWxC"),
    ],
)
def test_bad_images_are_refused_with_a_reason(image, message):
    with pytest.raises(ImageError, match=message):
        to_rgb8(image)


@pytest.mark.parametrize("kind", ["grey", "rgba", "uint16", "odd_size"])
def test_backbone_accepts_converted_images_at_their_resolution(backbone, rgb, kind):
    image = {
        "grey": rgb.mean(axis=2).astype(np.uint8),
        "rgba": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        "uint16": rgb.astype(np.uint16) * 257,
        "odd_size": np.ascontiguousarray(np.pad(rgb, ((0, 0), (0, 1), (0, 0)), mode="edge")[:479]),  # 641x479
    }[kind]
    out = backbone.infer(image)
    assert isinstance(out, BackboneOutput)
    assert out.shape == image.shape[:2]
    assert out.relative.dtype == np.float32
    assert out.kind is DepthKind.DEPTH and out.metric
    assert np.all(np.isfinite(out.relative)) and out.relative.min() >= 0.0


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 640, 3), np.uint8), "outside the supported range"),
        (np.zeros((480, 640, 5), np.uint8), "1, 3 or 4 channels"),
        (np.full((480, 640, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_backbone_refuses_bad_images(backbone, image, message):
    with pytest.raises(ImageError, match=message):
        backbone.infer(image)
