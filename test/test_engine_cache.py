"""Engine cache: the key covers every dependency; stale, truncated and foreign files are never loaded."""

from __future__ import annotations

import dataclasses

import pytest

from scale_field_ros.build_engine import engine_input_shape
from scale_field_ros.engine_cache import (
    EngineKey,
    engine_path,
    read_engine,
    timing_cache_path,
    write_engine,
)
from scale_field_ros.hashing import file_sha256

KEY = EngineKey(
    onnx_sha256="ab" * 32,
    tensorrt_version="10.13.0.35",
    gpu_name="Orin",
    compute_capability=(8, 7),
    precision="fp16",
    input_shape=(1, 3, 518, 686),
)
ENGINE = bytes(range(256)) * 64
CHANGES = {
    "onnx_sha256": "cd" * 32,
    "tensorrt_version": "10.14.1.48",
    "gpu_name": "NVIDIA GeForce RTX 4090",
    "compute_capability": (8, 9),
    "precision": "fp32",
    "input_shape": (1, 3, 518, 518),
}


def test_every_key_field_changes_the_file(tmp_path):
    onnx = tmp_path / "da2_small.onnx"
    base = engine_path(tmp_path, KEY, onnx)
    assert base.name.startswith("da2_small-fp16-518x686-")
    for name, value in CHANGES.items():
        other = dataclasses.replace(KEY, **{name: value})
        assert engine_path(tmp_path, other, onnx) != base, name
    assert engine_path(tmp_path, dataclasses.replace(KEY), onnx) == base


def test_round_trip_and_stale_key(tmp_path):
    path = tmp_path / "e.engine"
    write_engine(path, KEY, ENGINE)
    hit = read_engine(path, KEY)
    assert hit.engine == ENGINE and hit.reason == ""
    for name, value in CHANGES.items():
        miss = read_engine(path, dataclasses.replace(KEY, **{name: value}))
        assert miss.engine is None and "stale" in miss.reason and name in miss.reason
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_corrupt_files_are_detected(tmp_path):
    path = tmp_path / "e.engine"
    write_engine(path, KEY, ENGINE)
    good = path.read_bytes()
    cases = {
        "truncated engine": good[:-10],
        "flipped byte": good[:-100] + bytes([good[-100] ^ 0xFF]) + good[-99:],
        "truncated header": good[:30],
        "foreign": b"\x00" * 200,
        "empty": b"",
    }
    for label, data in cases.items():
        path.write_bytes(data)
        found = read_engine(path, KEY)
        assert found.engine is None, label
        assert "corrupt" in found.reason or "truncated" in found.reason or "not a" in found.reason, label
    assert "no cached engine" in read_engine(tmp_path / "missing.engine", KEY).reason


def test_key_validation_and_timing_cache_scope(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(KEY, precision="int8")
    with pytest.raises(ValueError, match="shape"):
        dataclasses.replace(KEY, input_shape=(1, 3, -1, 518))
    # Timing caches are shared across graphs and shapes of one GPU model and TensorRT version.
    same = dataclasses.replace(KEY, onnx_sha256="ef" * 32, input_shape=(1, 3, 266, 350), precision="fp32")
    assert timing_cache_path(tmp_path, same) == timing_cache_path(tmp_path, KEY)
    assert timing_cache_path(tmp_path, dataclasses.replace(KEY, gpu_name="RTX")) != timing_cache_path(tmp_path, KEY)


def test_file_hash_follows_content(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"graph-1")
    b.write_bytes(b"graph-1")
    assert file_sha256(a) == file_sha256(b)
    b.write_bytes(b"graph-2")
    assert file_sha256(a) != file_sha256(b)


def test_engine_input_shape_rules():
    assert engine_input_shape((518, 686), 14, None, None) == (1, 3, 518, 686)
    assert engine_input_shape(None, 14, 686, 518) == (1, 3, 518, 686)
    with pytest.raises(ValueError, match="dynamic"):
        engine_input_shape(None, 14, None, None)
    with pytest.raises(ValueError, match="multiples of 14"):
        engine_input_shape(None, 14, 640, 480)
    with pytest.raises(ValueError, match="fixed"):
        engine_input_shape((518, 686), 14, 700, 518)
