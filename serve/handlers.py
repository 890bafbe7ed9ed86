"""Serving requests: the part every server shares (PyTriton, Triton's Python backend). Torch-free.

A request is a mapping of input name -> numpy array with the batch axis (size 1) in front, as Triton delivers it;
a response is a mapping of output name -> array, also with the batch axis. :meth:`RequestHandler.check` reads one
request on its own against the bounds of :mod:`mmgen_edge.sdk.protocol` (a ``RequestError`` names the problem);
:meth:`RequestHandler.run` runs checked requests, those that can share an engine batch (same tasks and steps; for
generation also guidance and condition kind) as one batch. ``mmgen-edge serve`` checks each request in its own
Triton execute and batches the accepted ones itself (:mod:`.server`, :mod:`.batcher`), so a refusal fails its
execute: a Triton failure. :meth:`RequestHandler.serve` does both for a batch Triton assembled (the BLS entry
models of a Triton repository): a refused request gets an ``{"error": message}`` response, which the model turns
into a Triton error for that request alone, while the others are served.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmgen_edge.runtime.modalities import CONDITION_TASKS, perception_tasks
from mmgen_edge.runtime.sampler import MAX_STEPS
from mmgen_edge.sdk.api import GenerationRequest, MMGenModel, ModelOutput, check_cfg_scale, check_tasks

from mmgen_edge.sdk.protocol import (
    GENERATE_MODEL,
    IMAGE_OUTPUTS,
    INFO_MODEL,
    MAX_SEED,
    MAX_TEXT_BYTES,
    NO_LABEL,
    NO_STEPS,
    PERCEIVE_MODEL,
    RANDOM_SEED,
    ModelSpec,
    info_json,
    model_specs,
    text,
)

LOG = logging.getLogger("mmgen_edge.serve")

Request = Mapping[str, np.ndarray]
Response = dict[str, np.ndarray]


class RequestError(ValueError):
    """A request that cannot be served; the message goes back to its client."""


def error_response(message: str) -> Response:
    """The response of a refused request: only a non-empty ``error`` (the server makes it a Triton error)."""
    return {"error": text(message)}


def response_error(response: Mapping[str, np.ndarray]) -> str | None:
    """The message of a refused request's response (see :func:`error_response`), None for a served one."""
    if set(response) != {"error"}:
        return None
    value = np.asarray(response["error"]).reshape(-1)[0]
    message = value.decode(errors="replace") if isinstance(value, (bytes, np.bytes_)) else str(value)
    return message or None


def request_text(array: np.ndarray, name: str) -> str:
    """The string of one BYTES input, at most ``MAX_TEXT_BYTES`` bytes of UTF-8; RequestError naming it otherwise.

    Args:
        array: the input without the batch axis, shape (1,) (object array of bytes, or numpy bytes/str).
        name: the input's name, for the message.

    Returns:
        The decoded text.
    """
    value = np.asarray(array).reshape(-1)[0]
    if isinstance(value, str):
        value = value.encode("utf-8", errors="surrogatepass")
    if not isinstance(value, (bytes, np.bytes_)):
        raise RequestError(f"input {name!r} must be text (BYTES), got {type(value).__name__}")
    if len(value) > MAX_TEXT_BYTES:
        raise RequestError(f"input {name!r} is {len(value)} bytes long; at most {MAX_TEXT_BYTES} are accepted")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"input {name!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def parse_tasks(value: str, known: Sequence[str]) -> tuple[str, ...]:
    """Comma-separated task names: each known, each at most once, at least one (so at most ``len(known)``)."""
    try:
        return check_tasks([t.strip() for t in value.split(",") if t.strip()], known)
    except ValueError as e:
        raise RequestError(str(e)) from None


@dataclass(frozen=True)
class PerceiveItem:
    image: np.ndarray  # (R, R, 3) uint8
    tasks: tuple[str, ...]
    steps: int | None
    noise: np.ndarray  # (1, C, h, w)


class RequestHandler:
    """Serves the info, perceive and generate models of one loaded bundle (one instance per model instance)."""

    def __init__(self, model: MMGenModel):
        self.model = model
        self.specs: dict[str, ModelSpec] = model_specs(model.manifest)
        self.manifest_json = model.manifest.model_dump_json()
        self.batch_sizes: Counter[int] = Counter()  # engine batch size -> times run (shows the batcher working)
        self.tasks = perception_tasks(model.manifest.modalities)

    # ------------------------------------------------------------------------------------------ request parsing
    def _inputs(self, model: str, request: Request) -> dict[str, np.ndarray]:
        """The request's tensors without the batch axis, checked against the model's wire spec."""
        spec = self.specs[model]
        known = {t.name: t for t in spec.inputs}
        unknown = sorted(set(request) - set(known))
        if unknown:
            raise RequestError(f"{model}: unknown inputs {unknown}; it takes {sorted(known)}")
        out: dict[str, np.ndarray] = {}
        for name, wire in known.items():
            if name not in request:
                if not wire.optional:
                    raise RequestError(f"{model}: input {name!r} is required")
                continue
            array = np.asarray(request[name])
            if array.ndim == 0 or array.shape[0] != 1:
                raise RequestError(f"{model}: send one sample per request (input {name!r} has batch {array.shape[:1]}); the server batches requests")
            array = array[0]
            if wire.dtype is not np.bytes_ and array.dtype != np.dtype(wire.dtype):
                raise RequestError(f"{model}: input {name!r} is {array.dtype}, expected {np.dtype(wire.dtype)}")
            if len(array.shape) != len(wire.shape) or any(w not in (-1, s) for s, w in zip(array.shape, wire.shape)):
                raise RequestError(f"{model}: input {name!r} has shape {array.shape}, expected {wire.shape}")
            out[name] = array
        return out

    @staticmethod
    def _steps(inputs: Mapping[str, np.ndarray]) -> int | None:
        if "steps" not in inputs:
            return None
        steps = int(inputs["steps"][0])
        if steps == NO_STEPS:
            return None
        if not 1 <= steps <= MAX_STEPS:
            raise RequestError(f"steps must be in 1..{MAX_STEPS} (or {NO_STEPS} for the default), got {steps}")
        return steps

    @staticmethod
    def _seed(inputs: Mapping[str, np.ndarray]) -> int | None:
        seed = int(inputs["seed"][0]) if "seed" in inputs else RANDOM_SEED
        if not (seed == RANDOM_SEED or 0 <= seed <= MAX_SEED):
            raise RequestError(f"seed must be in 0..{MAX_SEED} (or {RANDOM_SEED} for a random one), got {seed}")
        return None if seed == RANDOM_SEED else seed

    def _noise(self, inputs: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        try:
            return self.model._noise(1, None, inputs.get("noise"), rng)
        except ValueError as e:
            raise RequestError(str(e)) from None

    def parse_perceive(self, request: Request) -> PerceiveItem:
        inputs = self._inputs(PERCEIVE_MODEL, request)
        tasks_text = request_text(inputs["tasks"], "tasks") if "tasks" in inputs else ",".join(self.tasks)
        tasks = parse_tasks(tasks_text, self.tasks)
        rng = np.random.default_rng(self._seed(inputs))
        return PerceiveItem(inputs["image"], tasks, self._steps(inputs), self._noise(inputs, rng))

    def parse_generate(self, request: Request) -> GenerationRequest:
        inputs = self._inputs(GENERATE_MODEL, request)
        label = int(inputs["class_label"][0]) if "class_label" in inputs else NO_LABEL
        classes = self.model.num_classes
        if not (label == NO_LABEL or 0 <= label < classes):
            raise RequestError(f"class_label must be in 0..{classes - 1} (or {NO_LABEL} for none), got {label}")
        condition = request_text(inputs["condition"], "condition") if "condition" in inputs else ""
        if condition and condition not in CONDITION_TASKS:
            raise RequestError(f"unknown condition {condition!r}; choose {', '.join(CONDITION_TASKS)}")
        if bool(condition) != ("condition_image" in inputs):
            raise RequestError("condition and condition_image go together (give both or neither)")
        try:
            # no cfg_scale: the bundle's default guidance, as a local generate(cfg_scale=None)
            given = float(inputs["cfg_scale"][0]) if "cfg_scale" in inputs else None
            cfg_scale = check_cfg_scale(self.model.guidance(given))
        except ValueError as e:
            raise RequestError(str(e)) from None
        seed = self._seed(inputs)
        noise = inputs.get("noise")
        if noise is not None:
            noise = self._noise(inputs, np.random.default_rng(seed))
        return GenerationRequest(
            class_label=None if label == NO_LABEL else label,
            condition=condition or None,
            condition_image=inputs.get("condition_image"),
            cfg_scale=cfg_scale,
            steps=self._steps(inputs),
            seed=seed,
            noise=noise,
        )

    # ------------------------------------------------------------------------------------------------- serving
    def check(self, model: str, request: Request) -> object:
        """One ``perceive`` or ``generate`` request read and checked on its own, ready for :meth:`run`.

        Raises:
            RequestError: the request is refused; the message names the problem (a request that could not be read
                at all is refused too, and logged).
        """
        parse = {PERCEIVE_MODEL: self.parse_perceive, GENERATE_MODEL: self.parse_generate}[model]
        try:
            return parse(request)
        except RequestError:
            raise
        except Exception as e:  # a request we failed to read fails alone, never its batch
            LOG.exception("could not read a request")
            raise RequestError(f"could not read the request ({type(e).__name__}: {e})") from None

    def run(self, model: str, items: Sequence[object]) -> list[Response]:
        """One response per checked request (from :meth:`check`), in order. Requests that can share an engine batch
        (same tasks and steps; for generation also guidance and condition kind) run as one, at most the manifest's
        ``max_batch`` at a time. A failing engine batch gives each of its requests an error response."""
        group_key, engine = self._engines[model]
        responses: list[Response | None] = [None] * len(items)
        groups: dict[object, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(group_key(item), []).append(i)
        limit = self.model.manifest.max_batch
        for members in groups.values():
            for start in range(0, len(members), limit):
                chunk = members[start : start + limit]
                self.batch_sizes[len(chunk)] += 1
                try:
                    out = engine([items[i] for i in chunk])
                except ValueError as e:  # a request the model refuses (checked in the SDK); the server is fine
                    for i in chunk:
                        responses[i] = error_response(str(e))
                    continue
                except Exception as e:  # logged here; its clients get a one-line error, not a traceback
                    LOG.exception("an engine batch of %d failed", len(chunk))
                    for i in chunk:
                        responses[i] = error_response(f"the server failed to run this batch ({type(e).__name__}: {e})")
                    continue
                for j, i in enumerate(chunk):
                    responses[i] = self._response(out, j)
        return responses  # type: ignore[return-value]  # every index was filled above

    def serve(self, model: str, requests: Sequence[Request]) -> list[Response]:
        """One response per request of ``model`` (info, perceive or generate), in order: each request is checked on
        its own (a refused one gets :func:`error_response`), the others :meth:`run` together."""
        if model == INFO_MODEL:
            return [self._info(request) for request in requests]
        responses: list[Response | None] = [None] * len(requests)
        accepted: list[tuple[int, object]] = []
        for i, request in enumerate(requests):
            try:
                accepted.append((i, self.check(model, request)))
            except RequestError as e:
                responses[i] = error_response(str(e))
        for (i, _), response in zip(accepted, self.run(model, [item for _, item in accepted])):
            responses[i] = response
        return responses  # type: ignore[return-value]  # every index was filled above

    def _info(self, request: Request) -> Response:
        try:
            inputs = self._inputs(INFO_MODEL, request)
            request_text(inputs["query"], "query")
        except RequestError as e:
            return error_response(f"{INFO_MODEL}: {e}")
        return {"manifest": text(self.manifest_json), "error": text("")}

    def _perceive(self, items: list[PerceiveItem]) -> ModelOutput:
        images = np.stack([item.image for item in items])
        noise = np.concatenate([item.noise for item in items])
        return self.model.perceive_model_images(images, items[0].tasks, items[0].steps, noise)

    @property
    def _engines(self) -> dict[str, tuple[Callable[[Any], object], Callable[[list[Any]], ModelOutput]]]:
        """Per model: what requests must share to run as one engine batch, and the engine call for such a batch."""
        return {
            PERCEIVE_MODEL: (lambda item: (item.tasks, item.steps), self._perceive),
            GENERATE_MODEL: (lambda r: (r.steps, r.cfg_scale, r.condition), self.model.generate_model_images),
        }

    def _response(self, out: ModelOutput, j: int) -> Response:
        response: Response = {IMAGE_OUTPUTS[m]: image[None] for m, image in out.images[j].items()}
        if out.latents is not None:
            response["latents"] = np.ascontiguousarray(out.latents[j : j + 1], dtype=np.float32)
        response["info"] = info_json(out.steps, self.model.backend, out.timings)
        response["error"] = text("")
        return response

