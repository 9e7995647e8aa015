"""Artifact directories: ``manifest.json`` plus one ``.npy`` file per array.

An artifact is written into a temporary sibling directory and renamed into place, so a crash never
leaves half an index under the final name. Arrays are loaded with ``mmap_mode="r"`` (read-only,
shared between processes, paged in on demand); ``np.load(..., allow_pickle=False)`` everywhere.

Layout::

    DIR/manifest.json            {"kind", "format_version", "params", "components": {...}, "arrays": {...}}
    DIR/<component>.<key>.npy    one array each

Each entry of ``manifest["arrays"]`` records the file name, dtype, shape and sha256 of the file, so a
truncated or swapped file is detected at load (``verify=True``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """An artifact directory is missing, incomplete, of the wrong kind or corrupted."""


@dataclass(frozen=True)
class Artifact:
    """A loaded artifact: its manifest and its (memory-mapped) arrays by component.

    Attributes
    ----------
    path : Path
    kind : str
    params : dict
        Artifact-level parameters (JSON).
    components : dict[str, tuple[dict, dict[str, np.ndarray]]]
        ``name -> (component params, arrays)``, as given to :func:`save_artifact`.
    """

    path: Path
    kind: str
    params: dict
    components: dict

    def component(self, name: str) -> tuple[dict, dict[str, np.ndarray]]:
        try:
            return self.components[name]
        except KeyError:
            raise ArtifactError(f"{self.path}: no component {name!r} (has {sorted(self.components)})") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_artifact_files(
    directory: Path,
    kind: str,
    params: Mapping[str, Any],
    components: Mapping[str, tuple[Mapping[str, Any], Mapping[str, np.ndarray]]],
) -> dict:
    """Write manifest and arrays into an existing, empty ``directory`` (no atomicity here).

    Returns the manifest dict. Raises ``ValueError`` for object arrays or bad names.
    """
    directory = Path(directory)
    manifest: dict[str, Any] = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "params": dict(params),
        "components": {},
        "arrays": {},
    }
    for comp_name, (comp_params, arrays) in components.items():
        if "." in comp_name or "/" in comp_name:
            raise ValueError(f"component name {comp_name!r} must not contain '.' or '/'")
        manifest["components"][comp_name] = {"params": dict(comp_params), "arrays": sorted(arrays)}
        for key, arr in arrays.items():
            arr = np.asarray(arr)
            if arr.dtype == object:
                raise ValueError(f"{comp_name}.{key}: object arrays cannot be stored without pickle")
            fname = f"{comp_name}.{key}.npy"
            fpath = directory / fname
            np.save(fpath, np.ascontiguousarray(arr), allow_pickle=False)
            manifest["arrays"][f"{comp_name}.{key}"] = {
                "file": fname,
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "sha256": _sha256(fpath),
            }
    with open(directory / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    return manifest


def save_artifact(
    out_dir: str | os.PathLike,
    kind: str,
    params: Mapping[str, Any],
    components: Mapping[str, tuple[Mapping[str, Any], Mapping[str, np.ndarray]]],
) -> Path:
    """Write an artifact atomically to ``out_dir`` (replacing an existing one).

    Parameters
    ----------
    out_dir : path
        Final directory. Written as a temporary sibling first, then renamed into place; an existing
        directory is moved aside and removed only after the new one is in place.
    kind : str
        Artifact kind, checked by :func:`load_artifact`.
    params : mapping
        JSON-serialisable artifact parameters (configs, counts, timings).
    components : mapping
        ``name -> (params, arrays)`` as returned by each component's ``to_arrays()``.

    Returns
    -------
    Path of the written artifact.
    """
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_artifact_files(tmp, kind, params, components)
        _fsync_dir(tmp)
        publish_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def publish_directory(tmp: Path, out: Path) -> None:
    """Rename the finished directory ``tmp`` to ``out``, replacing ``out`` if it exists."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(out, old)
    os.rename(tmp, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_artifact(path: str | os.PathLike, kind: str | None = None, *, mmap: bool = True, verify: bool = False) -> Artifact:
    """Load an artifact written by :func:`save_artifact`.

    Parameters
    ----------
    path : path
    kind : str, optional
        Expected kind; mismatch raises :class:`ArtifactError`.
    mmap : bool
        Memory-map arrays read-only (default) instead of reading them into memory.
    verify : bool
        Recompute every file's sha256 and compare with the manifest.

    Raises
    ------
    ArtifactError
        Missing manifest or array, wrong kind, format version, dtype/shape or checksum mismatch.
    """
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{root}: not an artifact directory (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{mpath}: unreadable manifest ({exc})") from None
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"{root}: artifact kind is {manifest.get('kind')!r}, expected {kind!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{root}: format version {manifest.get('format_version')} != {FORMAT_VERSION}")
    components: dict[str, tuple[dict, dict[str, np.ndarray]]] = {}
    for comp_name, comp in manifest["components"].items():
        arrays: dict[str, np.ndarray] = {}
        for key in comp["arrays"]:
            meta = manifest["arrays"][f"{comp_name}.{key}"]
            fpath = root / meta["file"]
            if not fpath.is_file():
                raise ArtifactError(f"{root}: missing array file {meta['file']}")
            if verify and _sha256(fpath) != meta["sha256"]:
                raise ArtifactError(f"{root}: checksum mismatch for {meta['file']}")
            arr = np.load(fpath, mmap_mode="r" if mmap else None, allow_pickle=False)
            if arr.dtype.str != meta["dtype"] or list(arr.shape) != meta["shape"]:
                raise ArtifactError(
                    f"{root}: {meta['file']} is {arr.dtype.str}{list(arr.shape)}, "
                    f"manifest says {meta['dtype']}{meta['shape']}"
                )
            arrays[key] = arr
        components[comp_name] = (comp["params"], arrays)
    return Artifact(path=root, kind=manifest["kind"], params=manifest["params"], components=components)


def strings_to_arrays(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode strings as ``(flat uint8 UTF-8 bytes, ptr int64 of length n+1)``."""
    encoded = [s.encode("utf-8") for s in strings]
    ptr = np.zeros(len(encoded) + 1, dtype=np.int64)
    if encoded:
        np.cumsum([len(b) for b in encoded], out=ptr[1:])
    flat = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return flat, ptr


def arrays_to_strings(flat: np.ndarray, ptr: np.ndarray) -> list[str]:
    """Inverse of :func:`strings_to_arrays`."""
    buf = bytes(np.asarray(flat))
    p = np.asarray(ptr).tolist()
    return [buf[p[i]:p[i + 1]].decode("utf-8") for i in range(len(p) - 1)]
