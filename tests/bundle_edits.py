"""Copies of a bundle with an edited manifest, for tests (the manifest itself is not hash-listed)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # a multi-GB bundle from MMGEN_EDGE_TEST_BUNDLE is not copied
    except OSError:
        shutil.copy2(src, dst)


def edited_bundle(bundle: Path, out: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``bundle`` at ``out`` whose manifest.json went through ``edit(raw_dict)``; graphs are hard-linked."""
    shutil.copytree(bundle, out, copy_function=link_or_copy)
    (out / "manifest.json").unlink()  # never write through a hard link into the original
    raw = json.loads((Path(bundle) / "manifest.json").read_text())
    edit(raw)
    (out / "manifest.json").write_text(json.dumps(raw))
    return out
