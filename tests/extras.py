"""Which optional extras this test run has, and the module-level guard for tests that need the export extra.

A test module that needs torch, onnx or diffusers starts with::

    from extras import require_export
    pytestmark = require_export()

On a base install (``pip install mmgen-edge``, no extras) the module is then skipped at collection with the reason,
so the torch-free part of the suite runs alone; with ``MMGEN_EDGE_REQUIRE_EXPORT=1`` (the full CI stage) a missing
extra is a failure instead of a skip.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

EXPORT_PACKAGES = ("torch", "onnx", "diffusers", "safetensors")
EXPORT_REASON = "needs the export extra (torch, onnx, diffusers): pip install 'mmgen-edge[export]'"


def missing_export_packages() -> list[str]:
    """The export extra's packages that are not installed."""
    return [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]


def has_export() -> bool:
    return not missing_export_packages()


def skip_without_export(allow_module_level: bool = False) -> None:
    """Skip the calling test (or module) when the export extra is missing; fail instead where CI requires it."""
    missing = missing_export_packages()
    if not missing:
        return
    if os.environ.get("MMGEN_EDGE_REQUIRE_EXPORT") == "1":
        pytest.fail(f"MMGEN_EDGE_REQUIRE_EXPORT=1 but {', '.join(missing)} missing", pytrace=False)
    pytest.skip(f"{EXPORT_REASON} (missing: {', '.join(missing)})", allow_module_level=allow_module_level)


def require_export() -> pytest.MarkDecorator:
    """For ``pytestmark = require_export()``: skips the module without the export extra, else marks it ``export``."""
    skip_without_export(allow_module_level=True)
    return pytest.mark.export
