"""The SDK against a served model: same ``perceive`` / ``generate`` / ``stream`` as the local one, over Triton.

Moving from local to served changes one line::

    model = mmgen_edge.load()                                        # local
    model = mmgen_edge.connect("grpc://127.0.0.1:8001")              # served (mmgen-edge serve, or a Triton repo)

The server runs only the model part (VAE encode, denoising loop, VAE decode) and batches concurrent clients;
this client resizes/encodes the inputs and post-processes the decoded images with the same code as the local
model, so both return the same results for the same noise. Needs ``tritonclient`` (``pip install
'mmgen-edge[client]'``), not torch and not the server. One ``RemoteModel`` per thread (like ``MMGenModel``);
its batched ``perceive([...])`` sends one request per image concurrently.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import numpy as np

from mmgen_edge.runtime.manifest import Manifest, parse_manifest
from mmgen_edge.runtime.sampler import check_steps
from mmgen_edge.sdk.protocol import (
    GENERATE_MODEL,
    IMAGE_OUTPUTS,
    INFO_MODEL,
    NO_LABEL,
    NO_STEPS,
    PERCEIVE_MODEL,
    RANDOM_SEED,
    TRITON_DTYPES,
    ModelSpec,
    model_specs,
    read_text,
    refusal_reason,
)

from .api import (
    PERCEPTION_TASKS,
    GenerationRequest,
    ModelOutput,
    check_seed,
    check_tasks,
    generation_request,
    generation_result,
    load_images,
    noise_array,
    perception_result,
)
from .images import to_model_size
from .model_base import Model
from .results import GenerationResult, PerceptionResult

DEFAULT_URL = "grpc://127.0.0.1:8001"
CONNECT_TIMEOUT_S = 5.0
#: Longest ``timeout`` / ``connect_timeout`` (a day): the request deadline goes to Triton in whole microseconds.
MAX_TIMEOUT_S = 86_400.0


def check_timeout(value: object, name: str) -> float:
    """``value`` as seconds: a finite real number in (0, MAX_TIMEOUT_S] (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise ValueError(f"{name} must be in (0, {MAX_TIMEOUT_S:g}] seconds, got {value!r}")
    return seconds


class RemoteError(RuntimeError):
    """The server refused or failed a request; the message is the server's."""


class ServerUnavailable(ConnectionError):
    """Nothing answers at the URL, or its mmgen-edge models never became ready; the message says what to do."""


def connect(url: str = DEFAULT_URL, steps: int | None = None, timeout: float = 60.0, connect_timeout: float = CONNECT_TIMEOUT_S) -> RemoteModel:
    """Connect to a served bundle and read its manifest.

    Args:
        url: ``grpc://host:port`` or ``http://host:port``.
        steps: default sampler steps for this client's requests (the server's default when None).
        timeout: seconds one request may take (also how long to wait for a live server's models to be ready).
        connect_timeout: seconds to wait for the server to answer at all; raise it to wait for one still starting.

    Returns:
        The remote model.

    Raises:
        ServerUnavailable: nothing answered within ``connect_timeout``, or the models were not ready in ``timeout``.
    """
    return RemoteModel(url, steps=steps, timeout=timeout, connect_timeout=connect_timeout)


def _client_module(scheme: str) -> Any:
    try:
        if scheme == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as e:
        raise ImportError(f"the remote SDK needs tritonclient ({e}); pip install 'mmgen-edge[client]'") from None
    return module


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class RemoteModel(Model):
    """A bundle served by Triton (the :class:`~mmgen_edge.sdk.model_base.Model` surface, run by the server)."""

    def __init__(self, url: str = DEFAULT_URL, steps: int | None = None, timeout: float = 60.0, connect_timeout: float = CONNECT_TIMEOUT_S):
        parsed = urlparse(url if "://" in url else f"grpc://{url}")
        if parsed.scheme not in ("grpc", "http") or not parsed.hostname or not parsed.port:
            raise ValueError(f"url must look like grpc://host:port or http://host:port, got {url!r}")
        timeout = check_timeout(timeout, "timeout")
        connect_timeout = check_timeout(connect_timeout, "connect_timeout")
        self.url = url
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self._grpc = parsed.scheme == "grpc"
        self._module = _client_module(parsed.scheme)
        self._address = f"{parsed.hostname}:{parsed.port}"
        self._client = self._new_client()
        self._pool: ThreadPoolExecutor | None = None
        try:
            self._wait_ready()
            manifest_text = read_text(self._infer(INFO_MODEL, {"query": np.array([[b"manifest"]], dtype=np.bytes_)})["manifest"])
        except BaseException:
            self.close()
            raise
        self.manifest: Manifest = parse_manifest(manifest_text, f"the manifest served at {url}")
        self.specs: dict[str, ModelSpec] = model_specs(self.manifest)
        self.steps = steps

    def _new_client(self, timeout: float | None = None) -> Any:
        if self._grpc:
            return self._module.InferenceServerClient(self._address)
        timeout = self.timeout if timeout is None else timeout
        return self._module.InferenceServerClient(self._address, connection_timeout=timeout, network_timeout=timeout)

    def _is_live(self, probe: Any, timeout: float) -> bool:
        if self._grpc:
            return bool(probe.is_server_live(client_timeout=timeout))
        return bool(probe.is_server_live())

    def _wait_live(self) -> None:
        """Fail within ``connect_timeout`` when nothing answers at the URL (no 60 s hang on a closed port)."""
        deadline = time.monotonic() + self.connect_timeout
        probe = self._client if self._grpc else self._new_client(timeout=self.connect_timeout)
        last: Exception | None = None
        try:
            while True:
                left = deadline - time.monotonic()
                try:
                    if self._is_live(probe, max(left, 0.1)):
                        return
                except Exception as e:  # noqa: BLE001 - refused / unreachable: retried until the deadline, then named
                    last = e
                if time.monotonic() + 0.2 >= deadline:
                    break
                time.sleep(0.2)
        finally:
            if probe is not self._client:
                probe.close()
        reason = _first_line(last) if last else "not live"
        raise ServerUnavailable(
            f"no server answers at {self.url} (waited {self.connect_timeout:g} s: {reason}); start one with "
            "`mmgen-edge serve BUNDLE` (or a Triton repository from `mmgen-edge triton-repo`), or check the URL, "
            "the port and any firewall"
        )

    def _wait_ready(self) -> None:
        self._wait_live()
        deadline = time.monotonic() + self.timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if all(self._client.is_model_ready(m) for m in (INFO_MODEL, PERCEIVE_MODEL, GENERATE_MODEL)):
                    return
            except Exception as e:  # noqa: BLE001 - the server went away or is still loading; named below
                last = e
            time.sleep(0.2)
        raise ServerUnavailable(
            f"no mmgen-edge models ready at {self.url} after {self.timeout:.0f} s ({_first_line(last) if last else 'not ready'}); "
            "is it an mmgen-edge server (mmgen_info, mmgen_perceive, mmgen_generate)?"
        )

    # ------------------------------------------------------------------------------------------------ plumbing
    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        client, self._client = self._client, None
        if client is not None:
            client.close()

    @property
    def backend(self) -> str:
        return "remote"

    def _infer(self, model: str, inputs: Mapping[str, np.ndarray], client: Any = None) -> dict[str, np.ndarray]:
        m = self._module
        tensors = []
        for name, array in inputs.items():
            kind = TRITON_DTYPES[np.bytes_ if array.dtype.kind in "SOU" else array.dtype.type]
            tensor = m.InferInput(name, list(array.shape), kind)
            tensor.set_data_from_numpy(array.astype(np.object_) if kind == "BYTES" else np.ascontiguousarray(array))
            tensors.append(tensor)
        client = client or self._client
        if client is None:
            raise RuntimeError("the remote model is closed")
        # ``timeout`` is also the request's deadline on the server: Triton drops it if still queued by then.
        deadline_us = int(self.timeout * 1e6)
        try:
            if self._grpc:
                result = client.infer(model, tensors, client_timeout=self.timeout, timeout=deadline_us)
            else:
                result = client.infer(model, tensors, timeout=deadline_us)
        except Exception as e:  # tritonclient's InferenceServerException and transport errors
            message = e.message() if callable(getattr(e, "message", None)) else str(e)
            raise RemoteError(f"{model} at {self.url}: {refusal_reason(message or str(e))}") from e
        response = result.get_response()
        names = [o.name for o in response.outputs] if self._grpc else [o["name"] for o in response["outputs"]]
        outputs = {name: result.as_numpy(name) for name in names}
        if "error" in outputs and read_text(outputs["error"]):
            raise RemoteError(f"{model} at {self.url}: {read_text(outputs['error'])}")
        return outputs

    def _map(self, model: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Send requests concurrently (one sample each) so the server can batch them; results in order."""
        if len(requests) == 1:
            return [self._infer(model, requests[0])]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.manifest.max_batch, thread_name_prefix="mmgen-remote")
        # gRPC clients are thread-safe; an HTTP client is not, so each HTTP request gets its own.
        def send(request: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if self._grpc:
                return self._infer(model, request)
            client = self._new_client()
            try:
                return self._infer(model, request, client)
            finally:
                client.close()

        return list(self._pool.map(send, requests))

    @staticmethod
    def _sampling(steps: int | None, seed: int | None, noise: np.ndarray | None) -> dict[str, np.ndarray]:
        if steps is not None:
            check_steps(steps)
        seed = check_seed(seed)  # the local model's bounds (0..MAX_SEED), so both refuse alike before any request
        out = {
            "steps": np.array([[NO_STEPS if steps is None else steps]], np.int32),
            "seed": np.array([[RANDOM_SEED if seed is None else seed]], np.int64),
        }
        if noise is not None:
            out["noise"] = np.ascontiguousarray(noise, dtype=np.float32)[None]
        return out

    @staticmethod
    def _output(outputs: list[dict[str, np.ndarray]]) -> ModelOutput:
        """Responses -> the same ``ModelOutput`` the local model part returns (timings of the first)."""
        names = {v: k for k, v in IMAGE_OUTPUTS.items()}
        images = [{names[k]: v[0] for k, v in o.items() if k in names} for o in outputs]
        info = json.loads(read_text(outputs[0]["info"]))
        latents = np.concatenate([o["latents"] for o in outputs])
        return ModelOutput(images, latents, dict(info["timings"]), int(info["steps"]))

    # ------------------------------------------------------------------------------------------------ the API
    def perceive(
        self,
        image: object,
        tasks: Sequence[str] = PERCEPTION_TASKS,
        steps: int | None = None,
        seed: int | None = None,
        noise: np.ndarray | None = None,
        return_latents: bool = False,
    ) -> PerceptionResult | list[PerceptionResult]:
        """As :meth:`Model.perceive <mmgen_edge.sdk.model_base.Model.perceive>`; a list is sent as concurrent requests."""
        tasks = check_tasks(tasks)
        inputs, batched = load_images(image)
        if not inputs:
            raise ValueError("no images given")
        start = time.perf_counter()
        model_images = [to_model_size(im, self.resolution) for im in inputs]
        preprocess = time.perf_counter() - start
        n = len(inputs)
        if noise is None and seed is not None and n > 1:
            # the local model draws one (N, ...) array from the seed; send each sample its row of it
            noise = np.random.default_rng(seed).standard_normal(self.latent_shape(n), dtype=np.float32)
        noises = [None] * n if noise is None else list(noise_array(noise, self.latent_shape(n)))
        steps = self.steps if steps is None else steps
        requests = []
        for i, im in enumerate(model_images):
            request = {"image": im[None], "tasks": np.array([[",".join(tasks).encode()]], dtype=np.bytes_)}
            request.update(self._sampling(steps, seed if noises[i] is None else None, noises[i]))
            requests.append(request)
        start = time.perf_counter()
        outputs = self._map(PERCEIVE_MODEL, requests)
        raw = self._output(outputs)
        raw.timings = {"preprocess": preprocess, "remote": time.perf_counter() - start, **raw.timings}
        results = [perception_result(raw, i, inputs[i].shape[:2], self.backend, return_latents) for i in range(len(inputs))]
        return results if batched else results[0]

    def generate(
        self,
        class_label: int | None = None,
        condition: Mapping[str, object] | None = None,
        cfg_scale: float | None = None,
        steps: int | None = None,
        seed: int | None = None,
        noise: np.ndarray | None = None,
        return_latents: bool = False,
    ) -> GenerationResult:
        """As :meth:`Model.generate <mmgen_edge.sdk.model_base.Model.generate>`."""
        request: GenerationRequest = generation_request(
            self.resolution, self.num_classes, class_label, condition, self.guidance(cfg_scale), steps, seed, noise,
            self.manifest.model.mask_palette,
        )
        if noise is not None:
            noise = noise_array(noise, self.latent_shape(1))[0]
        inputs: dict[str, np.ndarray] = {
            "class_label": np.array([[NO_LABEL if request.class_label is None else request.class_label]], np.int64),
            "cfg_scale": np.array([[request.cfg_scale]], np.float32),
            **self._sampling(self.steps if steps is None else steps, seed, noise),
        }
        if request.condition is not None:
            inputs["condition"] = np.array([[request.condition.encode()]], dtype=np.bytes_)
            inputs["condition_image"] = request.condition_image[None]  # type: ignore[index]
        start = time.perf_counter()
        raw = self._output([self._infer(GENERATE_MODEL, inputs)])
        raw.timings = {"remote": time.perf_counter() - start, **raw.timings}
        return generation_result(raw, 0, request, self.backend, return_latents)
