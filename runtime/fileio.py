"""File helpers shared by export and runtime: atomic directory and file writes, streamed hashing (no torch)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

HASH_CHUNK_BYTES = 8 << 20


def sha256_file(path: str | os.PathLike[str], progress: bool = False) -> str:
    """SHA-256 hex digest of a file, read in chunks (memory stays flat for an 11 GB checkpoint)."""
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress, leave=False
    ) as bar:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def weights_sha256(directory: str | os.PathLike[str]) -> str:
    """SHA-256 over the SHA-256 of each weights file (``*.safetensors``, else ``*.bin``) of a diffusers directory."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{directory} has no weights (*.safetensors or *.bin)")
    return hashlib.sha256("".join(sha256_file(path) for path in files).encode()).hexdigest()


def readable_like_folder(path: Path, folder: Path) -> None:
    """Give ``path`` at least the read/write bits its ``folder`` grants (a 0755 folder: 0644), never fewer than it has.

    Some writers create files 0600 (onnx's external data, ``tempfile.mkstemp``); a bundle's files must all be as
    readable as its graphs, or a server running as another user reads the .onnx file but not its weights.
    """
    want = stat.S_IMODE(folder.stat().st_mode) & 0o666
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & want != want:
        os.chmod(path, mode | want)


def link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link ``source`` at ``target`` (a derived bundle's unchanged graph takes no second copy on disk); copy it
    where a link cannot be made (another file system, a file system without links). Returns True when linked.

    Bundle files are never written in place (a new bundle replaces the folder), and every file is listed with its
    hash in its manifest, so a shared inode cannot change one bundle behind the other's back unnoticed.
    """
    try:
        os.link(source, target)
        return True
    except OSError:
        shutil.copy2(source, target)
        return False


#: Written into every directory that :func:`atomic_directory` produces: ``overwrite`` may replace only such a
#: directory (or an empty one), never a folder of unrelated files.
OUTPUT_MARKER = ".mmgen-edge-output"
OUTPUT_MARKER_TEXT = "written by mmgen-edge; --overwrite may replace this directory\n"
#: Entries mmgen-edge adds to an output after writing it: the runtime's compiled-model cache and ``build``'s engines
#: (both inside a bundle). Anything else the marker does not list was put there by someone else.
LATER_ENTRIES = frozenset({"cache", "engines"})


def marker_text(entries: Iterable[str]) -> str:
    """The marker of a finished output: who wrote it, and the top-level entries it held then (JSON)."""
    import json

    return json.dumps({"written_by": "mmgen-edge", "note": OUTPUT_MARKER_TEXT.strip(), "entries": sorted(entries)}) + "\n"


def foreign_entries(directory: Path) -> list[str]:
    """Top-level entries of a marked output that mmgen-edge did not write there (a user's notes, photos, ...):
    neither listed in its marker nor one of :data:`LATER_ENTRIES` holding only what those hold. Markers written
    before they listed entries (plain text) list nothing: such outputs are trusted as before."""
    recorded = _json_object(directory / OUTPUT_MARKER).get("entries")
    if not isinstance(recorded, list):
        return []
    known = {str(name) for name in recorded} | {OUTPUT_MARKER}
    return sorted(
        p.name for p in directory.iterdir()
        if p.name not in known and not (p.name in LATER_ENTRIES and _legacy_member(p))
    )  # fmt: skip


def _json_object(path: Path) -> dict:
    """The JSON object in ``path`` (at most 1 MiB), or {} when it is missing, too large or not an object."""
    import json

    try:
        if not path.is_file() or path.stat().st_size >= 1 << 20:
            return {}
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _legacy_output(directory: Path) -> bool:
    """A bundle, model directory or model repository written before the marker existed, recognised by structure:
    a manifest with our schema's top-level fields, a model config in our format, or an ``mmgen_info`` model."""
    manifest = _json_object(directory / "manifest.json")
    if isinstance(manifest.get("schema_version"), int) and {"graphs", "files", "model", "provenance"} <= set(manifest):
        return True
    config = _json_object(directory / "config.json")
    if config.get("format") == "mmgen-edge-model" and isinstance(config.get("model"), dict):
        return True
    repository = directory / "mmgen_info" / "config.pbtxt"
    return repository.is_file() and repository.stat().st_size < 1 << 20 and 'name: "mmgen_info"' in repository.read_text(errors="replace")


def written_by_us(directory: Path) -> bool:
    """True when ``directory`` is one that mmgen-edge wrote (the marker, or a bundle / model dir / repository).

    A folder is not ours because some file in it mentions our names: an old output is recognised by its structure
    (:func:`_legacy_output`), and any file of the folder that such an output never holds makes it not ours.
    """
    if (directory / OUTPUT_MARKER).is_file():
        return True
    return _legacy_output(directory) and all(_legacy_member(p) for p in directory.iterdir())


#: What an output written before the marker could hold (graphs, weights, configs, engines, OpenVINO blobs), at any
#: depth up to ``_LEGACY_DEPTH`` folders down (also what may be added later to a marked output, LATER_ENTRIES).
_LEGACY_SUFFIXES = (".onnx", ".data", ".plan", ".engine", ".json", ".safetensors", ".pbtxt", ".blob")
_LEGACY_DEPTH = 4


def _legacy_member(path: Path, depth: int = 0) -> bool:
    """Whether ``path`` is something an old output holds: such a file, or a folder (not a link) of only such things.

    A folder is looked into, never trusted by its kind: a user's ``photos/`` or ``.git/`` inside an old bundle makes
    the bundle not ours, so ``overwrite`` refuses it instead of deleting them.
    """
    if path.is_symlink():
        return False
    if path.is_dir():
        return depth < _LEGACY_DEPTH and all(_legacy_member(p, depth + 1) for p in path.iterdir())
    return path.name.endswith(_LEGACY_SUFFIXES)


def file_in_the_way(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a directory (a folder cannot be made there)."""
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def is_within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_output_directory(
    target: str | os.PathLike[str], overwrite: bool, protect: Iterable[str | os.PathLike[str]] = ()
) -> None:
    """Refuse an output path that exists (unless ``overwrite``), that is not a directory, that holds files this
    tool did not write, or that holds (or is) one of the ``protect`` paths (e.g. the source being converted)."""
    target = Path(target)
    if target.is_symlink():  # a link (even a dangling one) would be replaced by a directory, or followed out
        raise FileExistsError(f"{target} is a symbolic link: give the directory's real path as the output")
    blocked = file_in_the_way(target.parent)
    if blocked is not None:
        raise FileExistsError(f"{blocked} is a file, so {target} cannot be created: choose a directory path")
    remove_stale_temporaries(target)  # first: an output a killed run had moved aside is back before it is judged
    for path in protect:  # also when the output does not exist yet: an input made inside it would be lost at the end
        if is_within(path, target):
            raise ValueError(f"the output {target} holds the input {path}: writing it would delete the input")
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{target} is a file, not a directory: choose a directory path for the output")
    if not overwrite:
        raise FileExistsError(f"{target} already exists (choose another path or allow overwriting)")
    if any(target.iterdir()) and not written_by_us(target):
        names = sorted(p.name for p in target.iterdir())[:5]
        raise FileExistsError(
            f"{target} holds files mmgen-edge did not write ({', '.join(names)}, ...): overwriting replaces only "
            "directories this tool wrote; choose a new or empty output directory"
        )
    foreign = foreign_entries(target)  # [] without a marker listing entries
    if foreign:
        raise FileExistsError(
            f"{target} was written by mmgen-edge but now also holds {', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}, which overwriting would delete: move them out first"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_output_tree(path: Path) -> None:
    """Delete a folder of ours with its marker last, so one interrupted midway still carries the marker and the next
    run's :func:`remove_stale_temporaries` finishes the job (``rmtree`` may list the marker first)."""
    for item in list(path.iterdir()) if path.is_dir() and not path.is_symlink() else []:
        if item.name == OUTPUT_MARKER:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
    (path / OUTPUT_MARKER).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID`` / ``.NAME.old-PID`` beside ``target`` left by a killed process; returns them. An
    ``.old-PID`` whose process was killed between moving the old output aside and renaming the new one in, so that
    ``target`` is missing, is renamed back to ``target`` instead.

    Only folders that are ours: named exactly so (``NAME`` taken literally, not as a glob pattern), of a process
    that is gone, holding :data:`OUTPUT_MARKER` (written when :func:`atomic_directory` creates its temporary, and in
    every output it replaces). A user's folder that only looks like one, or a link, is left alone.
    """
    removed = []
    prefix = f".{target.name}."
    for path in target.parent.glob(f"{glob.escape(prefix)}*-*"):
        if not path.name.startswith(prefix):
            continue
        kind, _, pid = path.name[len(prefix) :].partition("-")
        if not (kind in ("tmp", "old") and pid.isascii() and pid.isdigit()) or int(pid) == os.getpid():
            continue
        if path.is_symlink() or not path.is_dir() or not (path / OUTPUT_MARKER).is_file() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not target.exists() and not target.is_symlink():
            os.rename(path, target)  # killed between its two renames: the replaced output is restored, not deleted
            continue
        remove_output_tree(path)
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike[str], overwrite: bool = False, protect: Iterable[str | os.PathLike[str]] = ()
) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` by rename.

    On any error the temporary directory is removed and ``target`` is left as it was, so a reader never sees a
    half-written result. An existing ``target`` is checked before any work (:func:`check_output_directory`):
    ``overwrite`` replaces only a directory mmgen-edge wrote, never one holding a ``protect`` path. Temporaries of
    killed earlier runs are removed first. Every file ends up at least as readable as the directory
    (:func:`readable_like_folder`: 0644 under the usual umask, whatever mode its writer gave it).
    """
    target = Path(target)
    check_output_directory(target, overwrite, protect)  # removes (or restores) a killed run's temporaries first
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    old: Path | None = None
    try:
        (tmp / OUTPUT_MARKER).write_text(OUTPUT_MARKER_TEXT)  # from the start: a killed run's temporary is ours
        yield tmp
        (tmp / OUTPUT_MARKER).write_text(marker_text(p.name for p in tmp.iterdir() if p.name != OUTPUT_MARKER))
        for item in tmp.rglob("*"):  # make the data durable before it becomes visible
            if not item.is_file():
                continue
            readable_like_folder(item, tmp)
            with open(item, "rb") as f:
                os.fsync(f.fileno())
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            remove_output_tree(old)
    except BaseException:
        if old is not None and old.is_dir():
            if target.exists():  # stopped while removing the old output: finish
                remove_output_tree(old)
            else:  # stopped between the two renames: put it back
                os.rename(old, target)
        remove_output_tree(tmp)
        raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` by rename.

    The temporary is ``target``'s name inside a private folder made beside it (``.NAME.tmp-PID-RANDOM/``, created
    exclusively, mode 0700): a link planted at a predictable name cannot redirect the write outside the output
    folder. It keeps ``target``'s name and extension, so writers that pick the format from the name (OpenCV's
    ``imwrite`` / ``VideoWriter``, ``np.savez``) write the right one. On any error the temporary is removed and
    ``target`` is left as it was, so a reader never sees a half-written file. The parent directory is created.

    Args:
        target: the file to write.

    Yields:
        The temporary path to write to (it does not exist yet).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=f".{target.name[:100]}.tmp-{os.getpid()}-", dir=target.parent))
    tmp = private / target.name
    try:
        yield tmp
        if tmp.is_symlink() or not tmp.is_file():
            raise FileNotFoundError(f"nothing was written for {target} (expected the temporary file {tmp})")
        with open(tmp, "rb") as f:  # durable before it becomes visible
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` through :func:`atomic_file`; returns ``target`` as a Path."""
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)
