"""Output directories of convrate's documents (report, audit): never over an input, never
over a directory holding anything but an earlier document of the same kind, written atomically.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Collection, Mapping, Sequence

from convrate.errors import InvalidInputError


def inside(a: Path, b: Path) -> bool:
    """a == b or a lies inside b (resolved paths)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or b in a.parents


def check_out_dir(out_dir: Path, kind: str, names: Collection[str], inputs: Sequence[Path] = ()) -> None:
    """InvalidInputError unless ``out_dir`` is new, empty, or holds only files of an earlier
    ``kind`` document (``names`` and PNG figures), and neither is, lies in, nor contains an input."""
    for p in inputs:
        if inside(out_dir, p) or inside(p, out_dir):
            raise InvalidInputError(f"--out {out_dir} overlaps the input {p}; outputs never go next to or over an "
                                    "input, choose another directory")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InvalidInputError(f"--out {out_dir} exists and is not a directory")
    foreign = [p.name for p in out_dir.iterdir() if not (p.is_file() and (p.suffix == ".png" or p.name in names))]
    if foreign:
        raise InvalidInputError(f"--out {out_dir} holds files that are not a convrate {kind} "
                                f"({', '.join(sorted(foreign)[:3])}); choose an empty or new directory")


def write_out_dir(out_dir: Path, files: Mapping[str, bytes | str], kind: str) -> None:
    """Write ``files`` (name -> content) to a temporary directory beside ``out_dir``, then
    replace ``out_dir`` with it, so a failure never leaves a half-written document."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=out_dir.parent))
    try:
        for name, content in files.items():
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
