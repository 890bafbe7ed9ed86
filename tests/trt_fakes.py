"""Stand-ins for TensorRT's Python API held to the real API of one release.

The surfaces in ``tests/data/trt_surface/`` (written by its ``extract.py`` from the ``tensorrt-cu12-bindings``
wheels) list every class, member and enum value of TensorRT 10.3, the latest 10.x and the latest 11.x. A fake
here refuses (``AttributeError``, as the real module would) any name its release lacks, so a misspelt or removed
TensorRT call fails a test. A name the release has but the fake does not implement raises
:class:`FakeNotImplemented` (an ``AssertionError``: it is not swallowed by ``hasattr``), so a fake never quietly
answers for the real object.

Calls are recorded as ``("Class.method", args, kwargs)`` and attribute sets as ``("Class.name=", (value,), {})``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SURFACE_DIR = Path(__file__).resolve().parent / "data" / "trt_surface"
SURFACE_FILES = tuple(sorted(SURFACE_DIR.glob("tensorrt-*.txt")))

#: Enum values that production code turns into ints (``1 << int(flag)``): NvInfer.h's values for TensorRT 10.
REAL_VALUES = {"NetworkDefinitionCreationFlag": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}}

Calls = list[tuple[str, tuple[Any, ...], dict[str, Any]]]


class FakeNotImplemented(AssertionError):
    """The real TensorRT release has this name, the fake does not implement it."""


@dataclass(frozen=True)
class Surface:
    """The names of one TensorRT release's Python API (``Class``, ``Class.member``, ``Enum.VALUE``)."""

    version: str
    names: frozenset[str]

    @classmethod
    def load(cls, path: Path) -> Surface:
        lines = path.read_text().splitlines()
        version = path.stem.removeprefix("tensorrt-")
        return cls(version, frozenset(line for line in lines if line and not line.startswith("#")))

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def has(self, name: str) -> bool:
        return name in self.names

    def require(self, name: str) -> None:
        """Raise ``AttributeError`` (as the real module would) when this release has no ``name``."""
        if name not in self.names:
            owner, _, attribute = name.rpartition(".")
            where = f"'{owner}' object" if owner else "module 'tensorrt'"
            raise AttributeError(f"{where} has no attribute {attribute!r} (TensorRT {self.version})")

    def enum_values(self, enum: str) -> list[str]:
        prefix = enum + "."
        return sorted(n[len(prefix) :] for n in self.names if n.startswith(prefix) and n[len(prefix) :].isupper())


def load_surfaces() -> list[Surface]:
    return [Surface.load(path) for path in SURFACE_FILES]


class FakeEnumValue:
    """One member of a fake pybind11 enum: named, int-convertible, equal only to itself."""

    def __init__(self, enum: str, name: str, value: int):
        self.enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __repr__(self) -> str:
        return f"<{self.enum}.{self.name}: {self.value}>"


class FakeEnum:
    """A TensorRT enum with exactly the values the release has."""

    def __init__(self, surface: Surface, name: str):
        values = surface.enum_values(name)
        if not values:
            raise ValueError(f"TensorRT {surface.version} has no enum {name!r}")
        known = REAL_VALUES.get(name, {})
        self._surface, self._name = surface, name
        self._values = {v: FakeEnumValue(name, v, known.get(v, 100 + i)) for i, v in enumerate(values)}

    def __getattr__(self, attribute: str) -> FakeEnumValue:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        self._surface.require(f"{self._name}.{attribute}")
        if attribute not in self._values:
            raise FakeNotImplemented(f"{self._name}.{attribute} is not an enum value")
        return self._values[attribute]


class FakeObject:
    """An instance of TensorRT class ``cls``: ``members`` are its values (callables become recorded methods)."""

    def __init__(self, surface: Surface, cls: str, calls: Calls | None = None, **members: Any):
        surface.require(cls)
        for name in members:
            surface.require(f"{cls}.{name}")  # a fake must not offer what the release lacks
        object.__setattr__(self, "_surface", surface)
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "_calls", calls if calls is not None else [])
        object.__setattr__(self, "_members", dict(members))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        qualified = f"{self._cls}.{name}"
        self._surface.require(qualified)
        if name not in self._members:
            raise FakeNotImplemented(f"{qualified} exists in TensorRT {self._surface.version}; the fake lacks it")
        value = self._members[name]
        if callable(value) and not isinstance(value, (FakeObject, FakeEnum, FakeEnumValue, type)):
            return _recorded(self._calls, qualified, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        self._surface.require(f"{self._cls}.{name}")
        self._calls.append((f"{self._cls}.{name}=", (value,), {}))
        self._members[name] = value

    def __repr__(self) -> str:
        return f"<fake {self._cls} (TensorRT {self._surface.version})>"


class FakeClass(FakeObject):
    """A TensorRT class object: calling it runs ``factory``; class attributes (``Logger.WARNING``) as members."""

    def __init__(self, surface: Surface, cls: str, factory: Callable[..., Any], calls: Calls | None = None,
                 **members: Any):  # fmt: skip
        super().__init__(surface, cls, calls, **members)
        object.__setattr__(self, "_factory", factory)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._calls.append((self._cls, args, kwargs))
        return self._factory(*args, **kwargs)


class FakeModule:
    """The ``tensorrt`` module of one release: only the given top-level names, each checked against the surface."""

    def __init__(self, surface: Surface, **names: Any):
        for name in names:
            surface.require(name)
        self._surface, self._names = surface, names
        self.__version__ = surface.version

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self._surface.require(name)
        if name not in self._names:
            raise FakeNotImplemented(f"tensorrt.{name} exists in TensorRT {self._surface.version}; the fake lacks it")
        return self._names[name]


def _recorded(calls: Calls, qualified: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def method(*args: Any, **kwargs: Any) -> Any:
        calls.append((qualified, args, kwargs))
        return function(*args, **kwargs)

    return method


def enums(surface: Surface, *names: str) -> dict[str, FakeEnum]:
    """``{name: FakeEnum}`` for ``FakeModule(surface, **enums(surface, "BuilderFlag", ...))``."""
    return {name: FakeEnum(surface, name) for name in names}


def called(calls: Calls, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """(args, kwargs) of every recorded call of ``name`` (e.g. ``"IBuilderConfig.set_flag"``), in order."""
    return [(args, kwargs) for qualified, args, kwargs in calls if qualified == name]
