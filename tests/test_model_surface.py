"""One model surface: the local and the served model implement the same abstract base, signature for signature."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from mmgen_edge.sdk.api import MMGenModel
from mmgen_edge.sdk.model_base import Model
from mmgen_edge.sdk.remote import RemoteModel

SURFACE = ("perceive", "generate", "stream", "close", "latent_shape", "__enter__", "__exit__")
PROPERTIES = ("backend", "resolution", "num_classes")


@pytest.mark.parametrize("name", SURFACE)
def test_local_and_remote_methods_have_the_base_signature(name):
    base = inspect.signature(getattr(Model, name))
    assert inspect.signature(getattr(MMGenModel, name)) == base
    assert inspect.signature(getattr(RemoteModel, name)) == base


def test_both_models_are_complete_implementations_of_the_base():
    for cls in (MMGenModel, RemoteModel):
        assert issubclass(cls, Model) and not inspect.isabstract(cls), cls.__abstractmethods__
        for name in PROPERTIES:
            assert isinstance(inspect.getattr_static(cls, name), property), (cls, name)
    assert Model.__abstractmethods__ == frozenset({"perceive", "generate", "close", "backend"})


def test_a_model_is_a_context_manager_that_closes(tiny_bundle):
    import mmgen_edge

    with mmgen_edge.load(tiny_bundle, device="cpu", verify="size") as model:
        assert isinstance(model, Model) and model.backend == "ort-cpu"
        assert model.latent_shape(2) == model.manifest.latent_shape(2)
        runners = list(model.pipeline.runners.values())
        assert all(r.active for r in runners)
    assert not any(r.active for r in runners)


def test_the_client_imports_neither_the_server_nor_torch():
    pytest.importorskip("tritonclient", reason="the remote client needs the client extra (tritonclient)")
    code = (
        "import sys, mmgen_edge.sdk.remote, mmgen_edge.sdk.protocol\n"
        "bad = [m for m in sys.modules if m.startswith(('mmgen_edge.serve', 'pytriton', 'torch'))]\n"
        "assert not bad, bad[:5]\n"
    )
    subprocess.run([sys.executable, "-P", "-c", code], check=True)  # -P: the installed package, not the checkout's folder
