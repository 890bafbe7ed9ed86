"""The wire contract of the served models: names, element types and shapes of every tensor (torch-free).

Three models are served, by ``mmgen-edge serve`` (PyTriton) and by the model repository of ``mmgen-edge
triton-repo`` (Triton's Python backend) alike, so one client (:mod:`mmgen_edge.sdk.remote`) talks to both. It lives
in ``sdk`` so that the client (the ``client`` extra: tritonclient only) imports it without ``mmgen_edge.serve``;
the servers import it from here too:

``mmgen_info``     query (1,) BYTES                                  -> manifest (1,) BYTES (the bundle's JSON), error
``mmgen_perceive`` image (R, R, 3) UINT8 at the model resolution,
                   [tasks (1,) BYTES "depth,normals,segmentation"], [steps (1,) INT32, 0 = default],
                   [seed (1,) INT64, -1 = random], [noise (C, h, w) FP32]
                   -> image_depth / image_normal / image_mask (R, R, 3) UINT8 (those asked for), latents (C, h, w)
                   FP32, info (1,) BYTES JSON {steps, backend, timings}, error (1,) BYTES ("" when it worked)
``mmgen_generate`` [class_label (1,) INT64, -1 = none], [condition (1,) BYTES "depth"|"normals"|"segmentation"],
                   [condition_image (R, R, 3) UINT8, encoded], [cfg_scale (1,) FP32], [steps], [seed], [noise]
                   -> image_rgb and the other images, latents, info, error

Every model batches (Triton adds a leading batch axis to each tensor); a request carries ONE sample (batch 1) and
the server's dynamic batcher merges concurrent requests into one engine batch. The client resizes and encodes
inputs and post-processes the decoded images (segment clustering, resizing back) with the same SDK code as the
local model, so the server runs only the model part and both give the same results.

Every field is bounded (the limits below; README journey 6 lists them): images exactly
(R, R, 3), tasks a comma-separated set of known task names (each at most once), steps 1..MAX_STEPS, class_label in
0..num_classes-1, cfg_scale finite in 0..MAX_CFG_SCALE, seed 0..2**63-1, noise (C, h, w) and finite, every BYTES
input at most MAX_TEXT_BYTES bytes of UTF-8. Each request is checked on its own; a request outside the bounds
fails alone, as a Triton error (a failed request in Triton's statistics and metrics, an
``InferenceServerException`` in tritonclient) naming the field, while the other requests of its batch are served.
A served response carries ``error`` = "" (kept on the wire for older clients).

R, C, h, w and the batch limit come from the bundle manifest (:func:`model_specs`), never re-typed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from mmgen_edge.runtime.manifest import Manifest
from mmgen_edge.runtime.modalities import RELEASE_MODALITIES, perception_modalities
from mmgen_edge.runtime.sampler import MAX_CFG_SCALE  # noqa: F401  (the wire's bound; re-exported)

INFO_MODEL = "mmgen_info"
PERCEIVE_MODEL = "mmgen_perceive"
GENERATE_MODEL = "mmgen_generate"
MODELS = (INFO_MODEL, PERCEIVE_MODEL, GENERATE_MODEL)

#: Output image tensor per modality (release names): ``image_<modality>``.
IMAGE_OUTPUTS: dict[str, str] = {m: f"image_{m}" for m in RELEASE_MODALITIES}
NO_STEPS, RANDOM_SEED, NO_LABEL = 0, -1, -1

#: The longest BYTES input (tasks, condition, query) in bytes: "depth,normals,segmentation" is 26.
MAX_TEXT_BYTES = 64
#: The largest seed (seeds are INT64; -1 asks for a random one).
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class WireTensor:
    """One tensor of a served model, per sample (without the batch axis); -1 is any size."""

    name: str
    dtype: type  # numpy scalar type; np.bytes_ for Triton BYTES
    shape: tuple[int, ...]
    optional: bool = False

    @property
    def triton_dtype(self) -> str:
        """The Triton data type name ("UINT8", "FP32", "BYTES", ...)."""
        return TRITON_DTYPES[self.dtype]


TRITON_DTYPES: dict[type, str] = {
    np.uint8: "UINT8",
    np.int32: "INT32",
    np.int64: "INT64",
    np.float32: "FP32",
    np.bytes_: "BYTES",
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[WireTensor, ...]
    outputs: tuple[WireTensor, ...]
    max_batch_size: int


def model_specs(manifest: Manifest) -> dict[str, ModelSpec]:
    """The three served models' tensors for a bundle."""
    r = manifest.model.resolution
    image = (r, r, 3)
    latent = manifest.latent_shape(1)[1:]
    scalar = (1,)
    sampling = (
        WireTensor("steps", np.int32, scalar, optional=True),
        WireTensor("seed", np.int64, scalar, optional=True),
        WireTensor("noise", np.float32, latent, optional=True),
    )
    results = (
        WireTensor("latents", np.float32, latent),
        WireTensor("info", np.bytes_, scalar),
        WireTensor("error", np.bytes_, scalar),
    )
    images = {m: WireTensor(IMAGE_OUTPUTS[m], np.uint8, image) for m in manifest.modalities}
    batch = manifest.max_batch
    return {
        INFO_MODEL: ModelSpec(
            INFO_MODEL,
            (WireTensor("query", np.bytes_, scalar),),
            (WireTensor("manifest", np.bytes_, scalar), WireTensor("error", np.bytes_, scalar)),
            batch,
        ),
        PERCEIVE_MODEL: ModelSpec(
            PERCEIVE_MODEL,
            (WireTensor("image", np.uint8, image), WireTensor("tasks", np.bytes_, scalar, optional=True), *sampling),
            tuple(images[m] for m in perception_modalities(manifest.modalities)) + results,
            batch,
        ),
        GENERATE_MODEL: ModelSpec(
            GENERATE_MODEL,
            (
                WireTensor("class_label", np.int64, scalar, optional=True),
                WireTensor("condition", np.bytes_, scalar, optional=True),
                WireTensor("condition_image", np.uint8, image, optional=True),
                WireTensor("cfg_scale", np.float32, scalar, optional=True),
                *sampling,
            ),
            tuple(images.values()) + results,
            batch,
        ),
    }


def text(value: str) -> np.ndarray:
    """A string as one request's BYTES tensor (batch axis included)."""
    return np.array([[value.encode()]], dtype=np.bytes_)


def read_text(array: np.ndarray) -> str:
    """The string in a (1, 1) BYTES tensor (bytes, numpy bytes or object arrays)."""
    value = np.asarray(array).reshape(-1)[0]
    return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)


# How Triton's Python backend wraps the refusal of a whole batch (serve/pytriton_errors.py): a prefix naming the
# model instance, the exception's type, and the raising frames after "At:".
_BATCH_REFUSAL = re.compile(r"Failed to process the request\(s\) for model '[^']*', message: (?:\w+Exception: )?(.*?)(?:\n\nAt:\n.*)?$", re.S)


def refusal_reason(message: str) -> str:
    """The server's own reason in an error message from Triton (unchanged when it is not a wrapped refusal)."""
    found = _BATCH_REFUSAL.search(message)
    return found.group(1).strip() if found else message


def info_json(steps: int, backend: str, timings: dict[str, float]) -> np.ndarray:
    return text(json.dumps({"steps": steps, "backend": backend, "timings": timings}))
