"""PLY point cloud output (binary little-endian), readable by MeshLab, CloudCompare and Open3D."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ply(path: str | Path, points_m: np.ndarray, rgb: np.ndarray | None = None) -> None:
    """Write Nx3 float32 points (metres) with optional Nx3 uint8 colours as a binary PLY."""
    points_m = np.asarray(points_m, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    props = ["property float x", "property float y", "property float z"]
    if rgb is not None:
        rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        if len(rgb) != len(points_m):
            raise ValueError(f"{len(rgb)} colours for {len(points_m)} points")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        props += ["property uchar red", "property uchar green", "property uchar blue"]
    records = np.empty(len(points_m), dtype=fields)
    records["x"], records["y"], records["z"] = points_m.T
    if rgb is not None:
        records["red"], records["green"], records["blue"] = rgb.T
    header = (
        "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {len(points_m)}", *props, "end_header"])
        + "\n"
    )
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(records.tobytes())
    tmp.replace(path)


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a PLY written by `write_ply` back as (Nx3 float32 points, Nx3 uint8 colours or None)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    if header[1] != "format binary_little_endian 1.0":
        raise ValueError(f"{path}: only binary little-endian PLY is supported")
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    has_rgb = any(line.endswith(" red") for line in header)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")] + ([("r", "u1"), ("g", "u1"), ("b", "u1")] if has_rgb else [])
    records = np.frombuffer(data, dtype=fields, count=count, offset=end)
    points = np.stack([records["x"], records["y"], records["z"]], axis=1)
    colours = np.stack([records["r"], records["g"], records["b"]], axis=1) if has_rgb else None
    return points, colours
