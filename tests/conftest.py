"""Shared fixtures: tiny MMGen models and checkpoints in the release layout, and a bundle for torch-free tests.

The fixtures that build models need the export extra and skip without it (see ``extras.py``); ``runtime_bundle``
is any exported bundle: ``MMGEN_EDGE_TEST_BUNDLE`` (a bundle exported elsewhere, as on a base install) or the
tiny bundle exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extras import skip_without_export


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(path, ema state dict) of a tiny release-layout checkpoint with Namespace args."""
    skip_without_export()
    from mmgen_edge.export.synthetic import TINY_ARGS, TINY_PROJECTOR, write_release_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    ema = write_release_checkpoint(path, projector=TINY_PROJECTOR, **TINY_ARGS)
    return path, ema


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """An MMGen (eval mode) holding the tiny checkpoint's EMA weights."""
    from mmgen_edge.export.checkpoint import import_checkpoint
    from mmgen_edge.export.model import MMGen

    imported = import_checkpoint(tiny_checkpoint[0])
    model = MMGen(imported.config)
    model.load_state_dict(imported.state_dict, strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint converted into a model directory."""
    from mmgen_edge.export.checkpoint import convert_checkpoint

    out = tmp_path_factory.mktemp("models") / "tiny"
    convert_checkpoint(tiny_checkpoint[0], out)
    return out


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    """A tiny random diffusers AutoencoderKL (SD-VAE interface: 4 latent channels at 1/8) saved as a directory."""
    skip_without_export()
    from mmgen_edge.export.synthetic import write_tiny_vae

    return write_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny-vae")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_dir, tiny_vae_dir, tmp_path_factory):
    """An fp32 bundle exported from the tiny model and VAE (max batch 4), with every graph (the self-contained
    ``denoiser`` too, which the export tests compare against PyTorch)."""
    from mmgen_edge.export.onnx_export import ALL_GRAPHS, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-fp32"
    export_bundle(tiny_model_dir, tiny_vae_dir, out, max_batch=4, graphs=ALL_GRAPHS)
    return out


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    """The demo model's bundle (samples/shapes/weights), exported into a temporary directory once per session."""
    skip_without_export()
    from mmgen_edge.sdk.demo import ensure_demo_bundle

    return ensure_demo_bundle(tmp_path_factory.mktemp("demo") / "bundle", progress=False)


@pytest.fixture(scope="session")
def runtime_bundle(request) -> Path:
    """A bundle for torch-free tests: ``MMGEN_EDGE_TEST_BUNDLE`` when set (exported elsewhere), else the tiny one."""
    given = os.environ.get("MMGEN_EDGE_TEST_BUNDLE")
    if given:
        path = Path(given)
        if not (path / "manifest.json").is_file():
            pytest.fail(f"MMGEN_EDGE_TEST_BUNDLE={given} is not a bundle (no manifest.json)", pytrace=False)
        return path
    return request.getfixturevalue("tiny_bundle")


@pytest.fixture(scope="session")
def nonfinite_checkpoint(tmp_path_factory):
    """A tiny release-layout checkpoint whose weights (ema and model) hold one NaN tensor and one Inf tensor."""
    skip_without_export()
    from mmgen_edge.export.synthetic import NONFINITE_WEIGHTS, TINY_ARGS, TINY_PROJECTOR, write_release_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "nonfinite.pt"
    write_release_checkpoint(path, projector=TINY_PROJECTOR, nonfinite=NONFINITE_WEIGHTS, **TINY_ARGS)
    return path


CORRUPT_VIDEO_FRAMES = 40


def cut_media_data(src: Path, dst: Path) -> None:
    """Copy an mp4, cutting out the second half of its media data (``mdat``): the index (``moov``) still announces
    every frame, so the file opens and reads until the cut, like a video damaged half-way."""
    import struct

    data = src.read_bytes()
    mdat, moov = data.find(b"mdat") - 4, data.find(b"moov") - 4
    if not 0 <= mdat < moov:
        raise ValueError(f"{src}: expected an mp4 with its mdat box before its moov box")
    half = mdat + (moov - mdat) // 2
    dst.write_bytes(data[:mdat] + struct.pack(">I", half - mdat) + data[mdat + 4 : half] + data[moov:])


@pytest.fixture(scope="session")
def corrupt_video(tmp_path_factory) -> Path:
    """An mp4 that announces CORRUPT_VIDEO_FRAMES 32x32 frames and is damaged half-way (see ``cut_media_data``)."""
    import numpy as np

    from mmgen_edge.sdk.stream import write_video

    folder = tmp_path_factory.mktemp("video")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(CORRUPT_VIDEO_FRAMES)]
    write_video(frames, folder / "whole.mp4", fps=10)
    cut_media_data(folder / "whole.mp4", folder / "corrupt.mp4")
    return folder / "corrupt.mp4"


#: A deliberately poor calibration: every activation range is this fraction of the observed one.
RANGE_CLIP = 0.01


@pytest.fixture()
def clipped_ranges(monkeypatch):
    """Make every activation range ``RANGE_CLIP`` of the observed one (a calibration the gate must refuse)."""
    skip_without_export()
    import numpy as np
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    from mmgen_edge.calibration import quantize

    original = quantize.compute_ranges

    def clipped(*args: object, **kwargs: object) -> TensorsData:
        ranges = original(*args, **kwargs)  # type: ignore[arg-type]
        data = {name: TensorData(lowest=np.float32(t.range_value[0] * RANGE_CLIP), highest=np.float32(t.range_value[1] * RANGE_CLIP))
                for name, t in ranges.data.items()}  # fmt: skip
        return TensorsData(ranges.calibration_method, data)

    monkeypatch.setattr(quantize, "compute_ranges", clipped)
