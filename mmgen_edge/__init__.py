"""mmgen-edge: deploy MMGen (arXiv 2503.20644) to robots, AR headsets and RTX/Jetson boxes.

Sub-packages:
- ``mmgen_edge.export``: PyTorch model, release-checkpoint import, reference samplers, ONNX/TensorRT export (needs the ``export`` extra).
- ``mmgen_edge.calibration``: INT8 calibration.
- ``mmgen_edge.runtime``: the torch-free runtime (sampler schedules, backends, denoising loop).
- ``mmgen_edge.sdk``: the typed API and CLI (``sdk.remote``: the same API against a served model).
- ``mmgen_edge.serve``: serving through Triton Inference Server (PyTriton, or a Triton model repository).
"""

from mmgen_edge.runtime.modalities import RELEASE_MODALITIES as MODALITIES  # noqa: F401 (public name)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``mmgen_edge.load`` / ``mmgen_edge.connect`` without importing the SDK at package import time."""
    if name == "load":
        from mmgen_edge.sdk.api import load

        return load
    if name == "connect":
        from mmgen_edge.sdk.remote import connect

        return connect
    raise AttributeError(f"module 'mmgen_edge' has no attribute {name!r}")
