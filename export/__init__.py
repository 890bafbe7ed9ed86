"""Export: the PyTorch MMGen model, release-checkpoint import, reference samplers, ONNX and TensorRT builds.

The torch-based names below are loaded on first use, so torch-free modules of this package
(``tensorrt_support`` with ``tensorrt_op_table`` and ``tensorrt_op_checks``, ``tensorrt_build``) can be imported
without torch installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CheckpointError": ".checkpoint",
    "UnsafeCheckpointError": ".checkpoint",
    "convert_checkpoint": ".checkpoint",
    "import_checkpoint": ".checkpoint",
    "MMGen": ".model",
    "count_parameters": ".model",
    "load_model": ".model_dir",
    "read_model_dir_config": ".model_dir",
    "save_model_dir": ".model_dir",
    "export_bundle": ".onnx_export",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mmgen_edge.export' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
