"""Shared fixtures: the real data beside the checkout."""

from __future__ import annotations

import pytest

from scale_field_ros.datasets import load_dataset, shared_root

SHARED = shared_root()


def dataset_dir(name: str):
    path = SHARED / "data" / name
    if not (path / "manifest.json").is_file():
        pytest.skip(f"shared data {path} is not present (CI places shared/ beside the checkout)")
    return path


@pytest.fixture(scope="session")
def nyu():
    return load_dataset(dataset_dir("nyu"))


@pytest.fixture(scope="session")
def sun3d():
    return load_dataset(dataset_dir("sun3d_seq"))


@pytest.fixture(scope="session")
def kitti():
    return load_dataset(dataset_dir("kitti_semidense"))


@pytest.fixture(scope="session")
def kitti_lidar():
    return load_dataset(dataset_dir("kitti_lidar"))


@pytest.fixture(scope="session")
def fastdepth_path():
    path = SHARED / "models" / "fastdepth_224.tflite"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path
