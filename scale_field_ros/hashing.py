"""Content hashes: of model files (cache keys for exports and engines, provenance in checkpoints) and of the
settings that name a cached file."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_digest(text: str, length: int) -> str:
    """The first `length` hex digits of the SHA-256 of `text` (UTF-8): short cache-key parts."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]
