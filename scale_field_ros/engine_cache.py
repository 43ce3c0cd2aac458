"""On-disk cache of TensorRT engines, keyed by everything that makes an engine invalid.

An engine is only valid for the exact ONNX graph, TensorRT version, GPU model and compute capability,
precision and input shape it was built for; a mismatch either fails to deserialise or, worse, runs
with wrong tactics. The key holds all of these; the file name carries its digest so differing keys
never collide, and the file's header repeats the full key plus a hash of the engine bytes, so a stale,
truncated or foreign file is detected and rebuilt instead of loaded. Pure python: no TensorRT needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scale_field_ros.hashing import text_digest

MAGIC = b"SCALEFIELD-TRT-ENGINE\x00v1\n"
PRECISIONS = ("fp16", "fp32")
_HEADER_LEN = struct.Struct("<Q")
_MAX_HEADER = 1 << 20


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.input_shape or any(int(d) < 1 for d in self.input_shape):
            raise ValueError(f"engine input shape must be fully known and positive, got {self.input_shape}")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        d["input_shape"] = list(self.input_shape)
        return d

    @staticmethod
    def from_dict(d: dict) -> EngineKey:
        return EngineKey(
            onnx_sha256=str(d["onnx_sha256"]),
            tensorrt_version=str(d["tensorrt_version"]),
            gpu_name=str(d["gpu_name"]),
            compute_capability=tuple(int(v) for v in d["compute_capability"]),  # type: ignore[arg-type]
            precision=str(d["precision"]),
            input_shape=tuple(int(v) for v in d["input_shape"]),
        )

    def digest(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return text_digest(canonical, 20)

    def file_name(self, stem: str) -> str:
        shape = "x".join(str(d) for d in self.input_shape[-2:])
        return f"{_slug(stem)}-{self.precision}-{shape}-{self.digest()}.engine"


@dataclass(frozen=True)
class CacheLookup:
    """Result of reading a cached engine: the bytes on a hit, else why it must be (re)built."""

    engine: bytes | None
    reason: str  # "" on a hit


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "model"


def default_cache_dir() -> Path:
    """$SCALE_FIELD_CACHE, else $XDG_CACHE_HOME/scale_field_ros, else ~/.cache/scale_field_ros."""
    env = os.environ.get("SCALE_FIELD_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scale_field_ros"


def engine_path(cache_dir: str | Path, key: EngineKey, onnx_path: str | Path) -> Path:
    return Path(cache_dir) / "engines" / key.file_name(Path(onnx_path).stem)


def timing_cache_path(cache_dir: str | Path, key: EngineKey) -> Path:
    """One timing cache per GPU model and TensorRT version: tactic timings carry over between graphs."""
    cc = "".join(str(v) for v in key.compute_capability)
    return Path(cache_dir) / "timing" / f"{_slug(key.gpu_name)}-sm{cc}-trt{_slug(key.tensorrt_version)}.cache"


def write_engine(path: str | Path, key: EngineKey, engine: bytes) -> None:
    """Write atomically (temp file + rename): a crash mid-write never leaves a half file under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps(
        {"key": key.as_dict(), "engine_sha256": hashlib.sha256(engine).hexdigest(), "engine_bytes": len(engine)},
        sort_keys=True,
    ).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(_HEADER_LEN.pack(len(header)))
            f.write(header)
            f.write(engine)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_engine(path: str | Path, key: EngineKey) -> CacheLookup:
    """The cached engine bytes if `path` holds an intact engine built for exactly `key`."""
    path = Path(path)
    if not path.is_file():
        return CacheLookup(None, f"no cached engine at {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        return CacheLookup(None, f"{path} is not a scale_field_ros engine file (corrupt or foreign)")
    offset = len(MAGIC)
    if len(data) < offset + _HEADER_LEN.size:
        return CacheLookup(None, f"{path} is truncated (no header)")
    (header_len,) = _HEADER_LEN.unpack_from(data, offset)
    offset += _HEADER_LEN.size
    if header_len > _MAX_HEADER or len(data) < offset + header_len:
        return CacheLookup(None, f"{path} is corrupt (bad header length)")
    try:
        header = json.loads(data[offset : offset + header_len])
        cached_key = EngineKey.from_dict(header["key"])
        expected_hash, expected_len = str(header["engine_sha256"]), int(header["engine_bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        return CacheLookup(None, f"{path} is corrupt (unreadable header: {exc})")
    if cached_key != key:
        changed = [
            f"{name} {getattr(cached_key, name)!r} -> {getattr(key, name)!r}"
            for name in (f.name for f in dataclasses.fields(EngineKey))
            if getattr(cached_key, name) != getattr(key, name)
        ]
        return CacheLookup(None, f"cached engine {path} is stale: {'; '.join(changed)}")
    engine = data[offset + header_len :]
    if len(engine) != expected_len or hashlib.sha256(engine).hexdigest() != expected_hash:
        return CacheLookup(None, f"{path} is corrupt (engine bytes do not match their recorded hash)")
    return CacheLookup(engine, "")
