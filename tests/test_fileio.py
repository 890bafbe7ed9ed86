"""Atomic output directories: overwriting never deletes what mmgen-edge did not write, and leaves no temporaries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mmgen_edge.runtime.fileio import OUTPUT_MARKER, atomic_directory, check_output_directory, remove_stale_temporaries


def test_overwrite_replaces_only_our_directories(tmp_path):
    foreign = tmp_path / "downloads"
    foreign.mkdir()
    (foreign / "0600000.pt").write_bytes(b"checkpoint")
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="did not write"):
        with atomic_directory(foreign, overwrite=True) as tmp:
            (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in foreign.iterdir()) == ["0600000.pt", "notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["downloads"]  # no temporary left

    ours = tmp_path / "model"
    with atomic_directory(ours) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (ours / OUTPUT_MARKER).is_file()
    with atomic_directory(ours, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in ours.iterdir()) == [OUTPUT_MARKER, "b.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty, overwrite=True) as tmp:
        (tmp / "c.txt").write_text("3")
    assert (empty / "c.txt").is_file()


def test_output_that_is_a_file_or_holds_the_input_is_refused(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file")
    with pytest.raises(FileExistsError, match="is a file"):
        check_output_directory(target, overwrite=True)
    ours = tmp_path / "model"
    with atomic_directory(ours) as tmp:
        (tmp / "x").write_text("x")
    source = ours / "checkpoint.pt"
    source.write_bytes(b"weights")
    with pytest.raises(ValueError, match="would delete the input"):
        check_output_directory(ours, overwrite=True, protect=[source])
    with pytest.raises(ValueError, match="would delete the input"):
        check_output_directory(ours, overwrite=True, protect=[ours])
    with pytest.raises(FileExistsError, match="already exists"):
        check_output_directory(ours, overwrite=False)


def test_temporaries_of_a_killed_run_are_removed(tmp_path):
    target = tmp_path / "bundle"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # that process has exited
    stale = [tmp_path / f".bundle.tmp-{pid}", tmp_path / f".bundle.old-{pid}"]
    for path in stale:
        path.mkdir()
        (path / "big.onnx").write_bytes(b"0" * 1024)
    alive = tmp_path / f".bundle.tmp-{os.getppid()}"  # a live process's temporary is left alone
    alive.mkdir()
    unrelated = tmp_path / ".other.tmp-1"
    unrelated.mkdir()
    assert sorted(remove_stale_temporaries(target)) == sorted(stale)
    assert alive.exists() and unrelated.exists()
    with atomic_directory(target) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, unrelated.name, "bundle"])


def test_atomic_directory_makes_every_file_as_readable_as_the_folder(tmp_path):
    """A writer that creates files 0600 (onnx's external data, mkstemp) leaves nothing more private than the graphs."""
    import stat

    with atomic_directory(tmp_path / "bundle") as tmp:
        (tmp / "graph.onnx").write_bytes(b"graph")
        private = os.open(tmp / "graph.onnx.data", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(private, b"weights")
        os.close(private)
        (tmp / "engines").mkdir()
        os.close(os.open(tmp / "engines" / "x.engine", os.O_WRONLY | os.O_CREAT, 0o600))
        (tmp / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(tmp / "run.sh", 0o755)  # bits beyond the folder's read/write ones are kept
    folder = stat.S_IMODE((tmp_path / "bundle").stat().st_mode) & 0o666
    assert folder & 0o400  # the test means something: the folder grants reading
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "bundle").rglob("*") if p.is_file()}
    assert modes["graph.onnx.data"] == modes["graph.onnx"] == modes["x.engine"] == folder | (0o600 & modes["graph.onnx"])
    assert modes["run.sh"] == 0o755 | folder
