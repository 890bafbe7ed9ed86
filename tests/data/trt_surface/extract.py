"""Extract the Python API surface of TensorRT releases from their ``tensorrt-cu12-bindings`` wheels.

TensorRT itself cannot be installed without NVIDIA's libraries, but the PyPI bindings wheels are real: their
compiled module ``tensorrt_bindings/tensorrt.so`` registers every class, method, property and enum value with
pybind11, passing the names as C string literals. This script writes one text file per release into this folder
(``tensorrt-<version>.txt``), one name per line, sorted::

    Builder                          a class (or a module-level function: ``get_plugin_registry``)
    Builder.create_network           a method or property (inherited ones included, as ``hasattr`` sees them)
    BuilderFlag.FP16                 an enum value
    ILogger.Severity.WARNING         a nested enum's value (and ``ILogger.WARNING``: the enum exports its values)

The test fakes (``tests/trt_fakes.py``) read these files so that a fake TensorRT object refuses what the real
release lacks. Regenerate (needs network access, ``pip`` and binutils' ``objdump``)::

    python tests/data/trt_surface/extract.py                     # the releases in RELEASES
    python tests/data/trt_surface/extract.py 10.3.0 --keep /tmp/w  # one release, keep the downloaded wheel

How names are mapped to classes. The string table alone cannot do it: the linker merges equal literals and keeps
a short literal only as the tail of a longer one (``Builder`` may exist only inside ``IBuilder``), and the table's
order is not the registration order. So the script disassembles the module (``objdump -d -C``, the symbol table
is not stripped) and follows every ``lea`` of a string literal (reading the C string at the address, which also
resolves tail-merged literals) to the pybind11 call that uses it:

* a call to ``pybind11::class_<T, Bases...>::class_`` / ``pybind11::enum_<T>::enum_`` with the literal in
  ``%rdx`` (the name argument) names the C++ type ``T`` in Python;
* a call to ``class_<T>::def*`` (``def``, ``def_property``, ``def_readwrite``, ...) or ``enum_<T>::value`` with
  the literal in ``%rsi`` adds a member to the object it is called on (``this`` in ``%rdi``, tracked through
  registers and stack slots, else the class constructed last) and to ``T``: identical code folding merges the
  instantiations of different ``T``, so the symbol alone can name the wrong class; ``module_::def`` adds a
  module-level function;
* inside a (constant-propagated) clone of one of those functions, the literals it references belong to the
  objects it was called on (this also admits a few argument names, e.g. ``self``);
* inlined registrations (TensorRT 10.3's compiler inlined many): ``class_<T>::init_instance`` referenced after a
  CamelCase literal names ``T``; ``add_class_method`` / ``def_property_static_impl`` / ``enum_base::value`` add
  the literal in ``%rsi`` to the class or enum constructed last;
* ``enum_base::export_values()`` after an enum copies its values into the enclosing scope (``ILogger.WARNING``);
* ``class_<T, Base>`` makes ``T`` inherit ``Base``'s members; a nested C++ type (``ILogger::Severity``) is
  qualified by its parent's Python name. The package's ``__init__.py`` adds its own names (``nptype``,
  ``__version__``, ``Logger.Severity = ILogger.Severity``).

The surface errs on the permissive side (a member may also be listed on an unrelated class, or an argument name
as a member), so a fake refuses only what the release really lacks.

Before writing, :func:`check_surface` asserts names known to exist in every release (so an absence in the file
can be trusted) and names known to be removed in 11.x (``BuilderFlag.FP16``, ``IInt8Calibrator``).
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: TensorRT 10.3 (JetPack 6), the latest 10.x and the latest 11.x on PyPI when the files were generated.
RELEASES = ("10.3.0", "10.16.1.11", "11.4.0.106")
PACKAGE = "tensorrt-cu12-bindings"
HERE = Path(__file__).resolve().parent

#: Present in every release: an extraction that misses one of them cannot be trusted.
ALWAYS_PRESENT = (
    "Builder",
    "Builder.create_network",
    "Builder.create_builder_config",
    "Builder.build_serialized_network",
    "Logger",
    "Logger.WARNING",
    "ILogger.Severity.WARNING",
    "Runtime",
    "Runtime.deserialize_cuda_engine",
    "OnnxParser",
    "OnnxParser.parse_from_file",
    "ICudaEngine.get_tensor_name",
    "ICudaEngine.num_io_tensors",
    "IExecutionContext.execute_async_v3",
    "IExecutionContext.set_tensor_address",
    "IExecutionContext.set_input_shape",
    "IBuilderConfig.set_flag",
    "BuilderFlag.TF32",
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    "DataType.HALF",
    "TensorIOMode.INPUT",
    "nptype",
    "__version__",
)
#: Removed in TensorRT 11 (weak typing and implicit quantization): present in 10.x, absent in 11.x.
REMOVED_IN_11 = ("BuilderFlag.FP16", "BuilderFlag.INT8", "IInt8Calibrator", "IInt8EntropyCalibrator2")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*")  # CamelCase, no underscore (DLA_core is a member)
_INSN = re.compile(r"^\s*[0-9a-f]+:\s+(\w+)\s+(.*?)\s*$")
_FUNCTION = re.compile(r"^([0-9a-f]+) <(.*)>:$")
_LEA = re.compile(r"^-?0x[0-9a-f]+\(%rip\),(%\w+)\s+# ([0-9a-f]+)")
_MOV = re.compile(r"^(%\w+|-?0x[0-9a-f]+\(%r[bs]p\)),(%\w+|-?0x[0-9a-f]+\(%r[bs]p\))$")
_CALL = re.compile(r"^([0-9a-f]+) <(.*)>$")
_LEA_STACK = re.compile(r"^(-?0x[0-9a-f]+\(%r[bs]p\)),(%\w+)$")
_CALLER_SAVED = ("%rax", "%rcx", "%rdx", "%rsi", "%rdi", "%r8", "%r9", "%r10", "%r11")
_DEF_KINDS = ("def", "def_static", "def_property", "def_property_readonly", "def_property_static",
              "def_property_readonly_static", "def_readwrite", "def_readonly", "def_readwrite_static",
              "def_readonly_static")  # fmt: skip
_PYBIND_INTERNAL = ("_pybind11_", "pybind11_")


# ------------------------------------------------------------------------------------------------- download


def download_wheel(version: str, folder: Path) -> Path:
    """``pip download --no-deps`` the bindings wheel of ``version`` into ``folder``; returns its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder),
               f"{PACKAGE}=={version}"]  # fmt: skip
    subprocess.run(command, check=True)
    wheels = sorted(folder.glob(f"{PACKAGE.replace('-', '_')}-{version}-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip downloaded no {PACKAGE} {version} wheel into {folder}")
    return wheels[0]


def wheel_members(wheel: Path) -> tuple[bytes, str]:
    """(the compiled ``tensorrt.so``, the package's ``__init__.py`` source) from a bindings wheel."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        modules = [n for n in names if re.fullmatch(r"[^/]+/tensorrt(\.cpython[^/]*)?\.so", n)]
        if len(modules) != 1:
            raise ValueError(f"{wheel.name}: expected one <package>/tensorrt*.so, found {modules}")
        init = modules[0].rsplit("/", 1)[0] + "/__init__.py"
        return archive.read(modules[0]), archive.read(init).decode()


# ------------------------------------------------------------------------------------------------ ELF reading


class ReadOnlyStrings:
    """C strings at virtual addresses of an ELF64 (little-endian) file's read-only, allocated sections."""

    def __init__(self, elf: bytes):
        if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
            raise ValueError("not a little-endian ELF64 file")
        self.elf = elf
        (section_offset,) = struct.unpack_from("<Q", elf, 0x28)
        entry_size, count, _ = struct.unpack_from("<HHH", elf, 0x3A)
        self.ranges: list[tuple[int, int, int]] = []  # (address, file offset, size)
        for index in range(count):
            _, kind, flags, address, offset, size = struct.unpack_from("<IIQQQQ", elf, section_offset + index * entry_size)
            alloc, write, execute = flags & 0x2, flags & 0x1, flags & 0x4
            if kind == 1 and alloc and not write and not execute:  # PROGBITS, read-only data
                self.ranges.append((address, offset, size))

    def at(self, address: int) -> str | None:
        """The identifier-like C string starting at ``address`` (None for other data or addresses)."""
        for start, offset, size in self.ranges:
            if start <= address < start + size:
                begin = offset + address - start
                end = self.elf.find(b"\0", begin, offset + size)
                if end < 0:
                    return None
                try:
                    text = self.elf[begin:end].decode("ascii")
                except UnicodeDecodeError:
                    return None
                return text if _IDENTIFIER.fullmatch(text) else None
        return None


# ------------------------------------------------------------------------------------------ demangled names


def _template_args(text: str, start: int) -> tuple[list[str], int]:
    """Top-level template arguments of ``text[start:]`` (just after a ``<``) and the index after the ``>``."""
    depth, args, current = 0, [], start
    for index in range(start, len(text)):
        char = text[index]
        if char in "<(":
            depth += 1
        elif char in ">)":
            if depth == 0:
                args.append(text[current:index].strip())
                return args, index + 1
            depth -= 1
        elif char == "," and depth == 0:
            args.append(text[current:index].strip())
            current = index + 1
    raise ValueError(f"unbalanced template arguments in {text!r}")


@dataclass(frozen=True)
class Binding:
    """A pybind11 function of a bound type: ``kind`` is e.g. ``class_``, ``enum_``, ``def_property``, ``value``."""

    wrapper: str  # "class_" or "enum_" (or "module_")
    cpp_type: str
    bases: tuple[str, ...]
    kind: str


def parse_binding(symbol: str) -> Binding | None:
    """Read ``pybind11::class_<T, ...>::def<...>(...)``-like demangled names; None for anything else.

    The demangled name may start with a return type (``pybind11::class_<T>& pybind11::class_<T>::def<...>``):
    the binding is the first ``class_<...>``/``enum_<...>`` followed by ``::member``.
    """
    if re.match(r"(\S+ )?pybind11::module_::def", symbol):
        return Binding("module_", "", (), "def")
    for match in re.finditer(r"pybind11::(class_|enum_)<", symbol):
        prefix = symbol[: match.start()]
        if prefix and not (prefix.endswith(" ") and prefix.count("<") == prefix.count(">")):
            return None  # e.g. cpp_function::initialize<pybind11::class_<T>::...>: not the binding itself
        args, end = _template_args(symbol, match.end())
        member = re.match(r"::(~?\w+)", symbol[end:])
        if member is not None:
            bases = tuple(a for a in args[1:] if "::" in a and not a.startswith("std::"))
            return Binding(match.group(1), args[0], bases, member.group(1))
    return None


# ------------------------------------------------------------------------------------------- disassembly walk


@dataclass
class Registry:
    """What the walk found, in C++ terms."""

    python_names: dict[str, str] = field(default_factory=dict)  # C++ type -> Python name
    members: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # C++ type -> member names
    bases: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    enums: set[str] = field(default_factory=set)
    exported: set[str] = field(default_factory=set)  # enums whose values are copied into the enclosing scope
    module: set[str] = field(default_factory=set)  # module-level functions

    def add_member(self, cpp_type: str, name: str | None) -> None:
        if name and not name.startswith(_PYBIND_INTERNAL):
            self.members[cpp_type].add(name)


def disassemble(so_path: Path) -> Iterator[str]:
    """Lines of ``objdump -d -C`` for ``so_path``."""
    if shutil.which("objdump") is None:
        raise FileNotFoundError("objdump (binutils) is needed to read the bindings' registrations")
    process = subprocess.Popen(["objdump", "-d", "-C", "--no-show-raw-insn", str(so_path)], stdout=subprocess.PIPE,
                               text=True, bufsize=1 << 20)  # fmt: skip
    assert process.stdout is not None
    yield from process.stdout
    if process.wait() != 0:
        raise RuntimeError(f"objdump failed on {so_path}")


def walk(lines: Iterable[str], strings: ReadOnlyStrings) -> Registry:
    """Follow string literals to the pybind11 registrations that use them (see the module docstring)."""
    walker = _Walker(strings)
    for line in lines:
        walker.feed(line)
    return walker.finish()


#: A tracked value: ("literal", text), ("object", C++ type of a class_/enum_ object) or ("slot", stack operand).
Value = tuple[str, str]


class _Walker:
    """A small abstract interpreter over the disassembly: literals and class_/enum_ objects in registers and
    stack slots, so a registration is given to the object it is called on (``this`` in ``%rdi``).

    The symbol of a called ``class_<T>::def*`` cannot be trusted alone: identical code folding merges the
    instantiations of different ``T`` (TensorRT 11's ``ICudaEngine.refittable`` is registered through a function
    named ``class_<IErrorRecorder>::def_property_readonly``). The symbol's ``T`` is only the fallback.
    """

    def __init__(self, strings: ReadOnlyStrings):
        self.strings = strings
        self.registry = Registry()
        self.clone_literals: dict[str, tuple[Binding, list[str]]] = {}  # function address -> its literals
        self.clone_callers: dict[str, set[str]] = defaultdict(set)  # function address -> types it was called on
        self.enter("", None)

    def enter(self, address: str, function: Binding | None) -> None:
        self.address, self.function = address, function
        self.values: dict[str, Value] = {}
        self.objects: dict[str, str] = {}  # stack slot -> C++ type of the class_/enum_ object living there
        self.context: str | None = None  # the class_/enum_ constructed last in this function
        self.last_enum: str | None = None
        self.last_class_name: str | None = None  # the last CamelCase literal not yet given to a class
        if function is not None:
            self.clone_literals[address] = (function, [])
            if function.wrapper != "module_":
                self.registry.bases[function.cpp_type].update(function.bases)

    def feed(self, line: str) -> None:
        header = _FUNCTION.match(line)
        if header:
            self.enter(header.group(1), parse_binding(header.group(2)))
            return
        insn = _INSN.match(line)
        if not insn:
            return
        op, operands = insn.groups()
        if op == "lea":
            self.lea(operands)
        elif op.startswith("mov"):
            move = _MOV.match(operands)
            if move:
                source, target = move.groups()
                if source in self.values:
                    self.values[target] = self.values[source]
                else:
                    self.values.pop(target, None)
        elif op in ("call", "jmp"):
            target = _CALL.match(operands)
            if target and not re.search(r"\+0x[0-9a-f]+$", target.group(2)):
                self.call(target.group(1), target.group(2))
            if op == "call":
                for register in _CALLER_SAVED:
                    self.values.pop(register, None)

    def lea(self, operands: str) -> None:
        stack = _LEA_STACK.match(operands)
        if stack:
            slot, register = stack.groups()
            known = self.objects.get(slot)
            self.values[register] = ("object", known) if known else ("slot", slot)
            return
        match = _LEA.match(operands)
        if not match:
            return
        register, address = match.group(1), int(match.group(2), 16)
        literal = self.strings.at(address)
        if literal is None:
            self.values.pop(register, None)
            symbol = re.search(r"<(.*)>$", operands)
            if symbol and re.search(r"::(init_instance|dealloc\w*)[<(]", symbol.group(1)):
                binding = parse_binding(symbol.group(1))  # an inlined class_ constructor fills its type_record
                if binding is not None:
                    self.context = binding.cpp_type
                    self.registry.bases[binding.cpp_type].update(binding.bases)
                    self.name_class(binding.cpp_type, self.last_class_name)
            return
        self.values[register] = ("literal", literal)
        if _CLASS_NAME.fullmatch(literal):
            self.last_class_name = literal
        if self.function is not None:
            self.clone_literals[self.address][1].append(literal)

    def literal(self, register: str) -> str | None:
        value = self.values.get(register)
        return value[1] if value and value[0] == "literal" else None

    def this(self) -> str | None:
        """The C++ type of the object ``%rdi`` points to: tracked, else the last class constructed here."""
        value = self.values.get("%rdi")
        if value and value[0] == "object":
            return value[1]
        return self.context

    def name_class(self, cpp_type: str, name: str | None) -> None:
        if name and _CLASS_NAME.fullmatch(name):
            self.registry.python_names.setdefault(cpp_type, name)
            self.last_class_name = None

    def call(self, address: str, symbol: str) -> None:
        registry, rsi = self.registry, self.literal("%rsi")
        if symbol.startswith("pybind11::detail::enum_base::export_values"):
            if self.last_enum is not None:
                registry.exported.add(self.last_enum)
            return
        if symbol.startswith("pybind11::detail::enum_base::value("):
            if self.last_enum is not None:
                registry.add_member(self.last_enum, rsi)  # an inlined enum_<T>::value
            return
        if symbol.startswith(("pybind11::detail::add_class_method(", "pybind11::detail::generic_type::def_property")):
            owner = self.this()  # an inlined class_<T>::def / def_property
            if owner is not None:
                registry.add_member(owner, rsi)
            return
        if symbol.startswith("pybind11::module_::add_object("):
            if rsi and not rsi.startswith(_PYBIND_INTERNAL):
                registry.module.add(rsi)
            return
        binding = parse_binding(symbol)
        if binding is None:
            return
        if binding.wrapper == "module_":
            if rsi and not rsi.startswith(_PYBIND_INTERNAL):
                registry.module.add(rsi)
            self.clone_callers[address].add("")
            return
        owners = {binding.cpp_type}
        if binding.kind == binding.wrapper:  # the constructor class_<T>(scope, "Name", ...): type-specific code
            value = self.values.get("%rdi")
            if value and value[0] == "slot":
                self.objects[value[1]] = binding.cpp_type
            self.context = binding.cpp_type
            self.name_class(binding.cpp_type, self.literal("%rdx"))
        else:
            # Folded code may carry another type's name: on a mismatch with the object it is called on, both get
            # the member (the surface errs on the permissive side).
            owners.add(self.this() or binding.cpp_type)
            if binding.kind in _DEF_KINDS or binding.kind == "value":
                for owner in owners:
                    registry.add_member(owner, rsi)
        registry.bases[binding.cpp_type].update(binding.bases)
        if binding.wrapper == "enum_":
            registry.enums.update(owners)
            self.last_enum = self.this() or binding.cpp_type
        self.clone_callers[address].update(owners)
        self.values["%rax"] = ("object", self.this() or binding.cpp_type)  # def/value return *this

    def finish(self) -> Registry:
        """Give the literals of (cloned) binding functions to the objects they were called on."""
        for address, (function, literals) in self.clone_literals.items():
            owners = self.clone_callers.get(address) or {function.cpp_type}
            for owner in owners:
                for literal in literals:
                    _literal_in_binding(self.registry, function, owner, literal)
        return self.registry


def _literal_in_binding(registry: Registry, function: Binding, owner: str, literal: str) -> None:
    """A literal referenced inside a (cloned) pybind11 function of a bound type, called on ``owner``."""
    if function.wrapper == "module_":
        if not literal.startswith(_PYBIND_INTERNAL):
            registry.module.add(literal)
    elif function.kind in ("class_", "enum_") and _CLASS_NAME.fullmatch(literal):
        registry.python_names.setdefault(owner, literal)
    elif function.kind in _DEF_KINDS or function.kind in ("value", "class_", "enum_"):
        registry.add_member(owner, literal)
        if function.wrapper == "enum_":
            registry.enums.add(owner)


# -------------------------------------------------------------------------------------------- Python surface


def python_surface(registry: Registry, init_source: str) -> set[str]:
    """Qualified Python names (``Class``, ``Class.member``, ``Enum.VALUE``) of the bound module + ``__init__``."""
    qualified: dict[str, str] = {}

    def qualify(cpp_type: str) -> str | None:
        if cpp_type in qualified:
            return qualified[cpp_type]
        name = registry.python_names.get(cpp_type)
        if name is None:
            return None
        parent = cpp_type.rsplit("::", 1)[0] if "::" in cpp_type else ""
        outer = qualify(parent) if parent in registry.python_names else None
        qualified[cpp_type] = f"{outer}.{name}" if outer else name
        return qualified[cpp_type]

    own: dict[str, set[str]] = defaultdict(set)  # Python qualified class -> own members
    for cpp_type in registry.python_names:
        scope = qualify(cpp_type)
        assert scope is not None
        own[scope] |= registry.members.get(cpp_type, set())
        if cpp_type in registry.exported:  # export_values: the values also live in the enclosing scope
            parent = scope.rsplit(".", 1)[0] if "." in scope else None
            values = {m for m in registry.members.get(cpp_type, set()) if not m.startswith("_") and m.isupper()}
            if parent:
                own[parent] |= values
    bases: dict[str, set[str]] = defaultdict(set)
    for cpp_type, cpp_bases in registry.bases.items():
        scope = qualify(cpp_type)
        if scope:
            bases[scope] |= {b for b in (qualify(base) for base in cpp_bases) if b and b != scope}

    def inherited(scope: str, seen: frozenset[str] = frozenset()) -> set[str]:
        names = set(own.get(scope, set()))
        for base in bases.get(scope, ()):
            if base not in seen:
                names |= inherited(base, seen | {scope})
        return names

    surface = set(registry.module)
    for scope in own:
        surface.add(scope)
        surface |= {f"{scope}.{member}" for member in inherited(scope)}
    _add_init_names(surface, init_source)
    return surface


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _add_init_names(surface: set[str], source: str) -> None:
    """Names the package's ``__init__.py`` defines: functions, module variables, ``Class.attr = ...``."""
    tree = ast.parse(source)
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, (ast.If, ast.Try)):
            pending += node.body + node.orelse + [s for h in getattr(node, "handlers", []) for s in h.body]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            surface.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                name = _dotted(target)
                if name is None or (name.startswith("_") and name != "__version__"):
                    continue
                surface.add(name)
                source_name = _dotted(node.value)
                if source_name and source_name in surface:  # an alias: Logger.Severity = ILogger.Severity
                    prefix = source_name + "."
                    surface |= {name + "." + s[len(prefix):] for s in list(surface) if s.startswith(prefix)}


# ------------------------------------------------------------------------------------------------- checks


def check_surface(version: str, surface: set[str]) -> None:
    """Assert names known present (all releases) and known removed (11.x); raises ``AssertionError`` listing them."""
    problems = [f"{name} is missing" for name in ALWAYS_PRESENT if name not in surface]
    major = int(version.split(".")[0])
    for name in REMOVED_IN_11:
        if major >= 11 and name in surface:
            problems.append(f"{name} was removed in TensorRT 11 but was extracted")
        elif major < 11 and name not in surface:
            problems.append(f"{name} exists in TensorRT 10 but was not extracted")
    if problems:
        raise AssertionError(f"TensorRT {version}: the extracted surface is wrong:\n  " + "\n  ".join(problems))


def extract(wheel: Path) -> set[str]:
    """The checked Python surface of one bindings wheel."""
    version = wheel.name.split("-")[1]
    so_bytes, init_source = wheel_members(wheel)
    with tempfile.TemporaryDirectory() as folder:
        so_path = Path(folder) / "tensorrt.so"
        so_path.write_bytes(so_bytes)
        registry = walk(disassemble(so_path), ReadOnlyStrings(so_bytes))
    surface = python_surface(registry, init_source)
    check_surface(version, surface)
    return surface


def surface_path(version: str, folder: Path = HERE) -> Path:
    return folder / f"tensorrt-{version}.txt"


def write_surface(version: str, surface: set[str], folder: Path = HERE) -> Path:
    """Write the sorted surface (one name per line) with a one-line provenance comment."""
    path = surface_path(version, folder)
    header = f"# Python API surface of TensorRT {version} ({PACKAGE} wheel), written by extract.py\n"
    path.write_text(header + "".join(f"{name}\n" for name in sorted(surface)))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", default=list(RELEASES), help=f"releases (default: {' '.join(RELEASES)})")
    parser.add_argument("--keep", type=Path, help="download the wheels into this folder and keep them")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the surface files (default: this one)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for version in args.versions:
            existing = sorted(folder.glob(f"{PACKAGE.replace('-', '_')}-{version}-*.whl"))
            wheel = existing[0] if existing else download_wheel(version, folder)
            surface = extract(wheel)
            path = write_surface(version, surface, args.out)
            print(f"{path}: {len(surface)} names, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
