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
        (path / OUTPUT_MARKER).write_text("ours")  # atomic_directory writes it when it creates the temporary
    alive = tmp_path / f".bundle.tmp-{os.getppid()}"  # a live process's temporary is left alone
    alive.mkdir()
    (alive / OUTPUT_MARKER).write_text("ours")
    unrelated = tmp_path / ".other.tmp-1"
    unrelated.mkdir()
    lookalike = tmp_path / f".bundle.old-{pid + 1}"  # a user's folder named like one, without the marker: kept
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("keep")
    target.mkdir()  # the output exists, so its moved-aside old copy is not needed
    (target / OUTPUT_MARKER).write_text("ours")
    assert sorted(remove_stale_temporaries(target)) == sorted(stale)
    assert alive.exists() and unrelated.exists() and (lookalike / "notes.txt").exists()
    with atomic_directory(target, overwrite=True) as tmp:
        assert (tmp / OUTPUT_MARKER).is_file()  # from the start, so a killed run's temporary is recognised
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, unrelated.name, lookalike.name, "bundle"])


def test_an_output_name_with_glob_characters_removes_only_its_own_temporaries(tmp_path):
    """``--out 'tr3/*'`` made the cleanup's pattern match every dot-folder of the parent (user folders removed)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    others = [tmp_path / f".a.tmp-{pid}", tmp_path / f".notes.old-{pid}"]
    for path in others:
        path.mkdir()
        (path / OUTPUT_MARKER).write_text("even ours, but another output's")
    for name in ("*", "?????", "[an]*"):
        assert remove_stale_temporaries(tmp_path / name) == []
    assert all(path.exists() for path in others)
    own = tmp_path / f".*.tmp-{pid}"
    own.mkdir()
    (own / OUTPUT_MARKER).write_text("ours")
    assert remove_stale_temporaries(tmp_path / "*") == [own]


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


# ------------------------------------------------------------------------------------------ atomic files
def test_atomic_file_renames_on_success_and_keeps_the_extension(tmp_path):
    from mmgen_edge.runtime.fileio import atomic_file, write_text_atomic

    target = tmp_path / "sub" / "report.json"
    with atomic_file(target) as tmp:
        assert tmp.parent.parent == target.parent and tmp.name == "report.json" and not target.exists()
        assert tmp.parent.name.startswith(f".report.json.tmp-{os.getpid()}-") and not tmp.exists()
        tmp.write_text("{}")
    assert target.read_text() == "{}"
    assert write_text_atomic(target, '{"a": 1}') == target and target.read_text() == '{"a": 1}'
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_a_link_planted_at_a_temporary_name_is_never_written_through(tmp_path):
    """The temporary was ``.NAME.tmp-PID.EXT``: a link planted there for a likely PID made the write land outside
    the output folder. Now it is made in a private folder created exclusively with a random name."""
    from mmgen_edge.runtime.fileio import atomic_file

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the old names, for nearby PIDs
        (out / f".depth.tmp-{pid}.png").symlink_to(victim)
    with atomic_file(out / "depth.png") as tmp:
        tmp.write_bytes(b"png")
    assert victim.read_text() == "precious" and (out / "depth.png").read_bytes() == b"png"
    assert not (out / "depth.png").is_symlink()


def test_atomic_file_leaves_the_target_as_it_was_on_error(tmp_path):
    from mmgen_edge.runtime.fileio import atomic_file

    target = tmp_path / "grid.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    with pytest.raises(FileNotFoundError, match="nothing was written for"):
        with atomic_file(target):
            pass
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_write_video_and_write_image_are_atomic(tmp_path):
    import cv2
    import numpy as np

    from mmgen_edge.sdk.images import write_image
    from mmgen_edge.sdk.stream import write_video

    video = tmp_path / "out.mp4"
    video.write_bytes(b"previous video")

    def frames():
        yield np.zeros((16, 16, 3), np.uint8)
        yield np.zeros((16, 16, 3), np.uint8)
        raise RuntimeError("the stream failed")

    with pytest.raises(RuntimeError, match="the stream failed"):
        write_video(frames(), video, fps=10)
    assert video.read_bytes() == b"previous video" and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    assert write_video([np.full((16, 16, 3), 9, np.uint8)] * 3, video, fps=10) == 3
    assert int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT)) == 3

    image = np.zeros((4, 6, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    assert write_image(tmp_path / "maps" / "a.png", image) == tmp_path / "maps" / "a.png"
    assert cv2.imread(str(tmp_path / "maps" / "a.png"))[0, 0].tolist() == [0, 0, 200]  # BGR on disk
    with pytest.raises(ValueError, match=r"could not write .*a\.nope"):
        write_image(tmp_path / "maps" / "a.nope", image)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["a.png"]


def test_overwrite_recognises_old_outputs_by_structure_not_by_a_mention(tmp_path):
    """A folder is not ours because a file in it mentions our names; an old bundle (before the marker) still is."""
    import json

    lookalike = tmp_path / "thesis"
    lookalike.mkdir()
    (lookalike / "manifest.json").write_text(json.dumps({"schema_version": 3, "app": "someone else"}))
    (lookalike / "thesis.tex").write_text("keep me")
    other = tmp_path / "data"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"note": "mmgen-edge-model"}))
    (other / "data.csv").write_text("1,2")
    for folder in (lookalike, other):
        with pytest.raises(FileExistsError, match="did not write"):
            check_output_directory(folder, overwrite=True)
    assert (lookalike / "thesis.tex").is_file() and (other / "data.csv").is_file()

    old_bundle = tmp_path / "old-bundle"  # what export wrote before the marker: replaceable
    old_bundle.mkdir()
    (old_bundle / "manifest.json").write_text(json.dumps({"schema_version": 1, "graphs": {}, "files": [], "model": {}, "provenance": {}}))
    (old_bundle / "denoiser_cached.onnx").write_bytes(b"graph")
    check_output_directory(old_bundle, overwrite=True)
    (old_bundle / "cache" / "engines").mkdir(parents=True)  # a folder of what it writes is part of it
    (old_bundle / "cache" / "engines" / "denoiser.plan").write_bytes(b"engine")
    check_output_directory(old_bundle, overwrite=True)
    for user_thing in ("photos/holiday.jpg", ".git/HEAD", "cache/notes.txt"):  # a folder is looked into, not trusted
        path = old_bundle / user_thing
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a user's file")
        with pytest.raises(FileExistsError, match="did not write"):
            check_output_directory(old_bundle, overwrite=True)
        path.unlink()
    (old_bundle / "elsewhere").symlink_to(tmp_path / "thesis", target_is_directory=True)  # a link is not ours
    with pytest.raises(FileExistsError, match="did not write"):
        check_output_directory(old_bundle, overwrite=True)
    (old_bundle / "elsewhere").unlink()
    (old_bundle / "notes.txt").write_text("a user's file inside it: then it is not replaced")
    with pytest.raises(FileExistsError, match="did not write"):
        check_output_directory(old_bundle, overwrite=True)


def test_an_output_that_is_a_link_or_lies_under_a_file_is_refused_before_any_work(tmp_path):
    ours = tmp_path / "ours"
    with atomic_directory(ours) as tmp:
        (tmp / "a.txt").write_text("1")
    link, dangling = tmp_path / "link", tmp_path / "dangling"
    link.symlink_to(ours, target_is_directory=True)
    dangling.symlink_to(tmp_path / "nowhere", target_is_directory=True)
    for target in (link, dangling):
        with pytest.raises(FileExistsError, match="symbolic link"):
            with atomic_directory(target, overwrite=True):
                raise AssertionError("the work must not start")
    assert link.is_symlink() and (ours / "a.txt").read_text() == "1"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="afile is a file"):
        check_output_directory(tmp_path / "afile" / "sub", overwrite=False)

    # a link named like a stale temporary is not ours (mmgen-edge makes none): left alone, never followed
    stale = tmp_path / f".ours.old-{2**22 + 12345}"
    stale.symlink_to(ours, target_is_directory=True)
    with atomic_directory(tmp_path / "ours", overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert stale.is_symlink() and (ours / "b.txt").is_file()


def test_overwrite_refuses_what_a_user_added_to_an_output_and_keeps_what_mmgen_edge_adds(tmp_path):
    """The marker made the whole folder "ours": a user's notes.txt or photos/ in an old bundle went with
    --overwrite. The marker now lists what was written; the runtime's cache/ and build's engines/ may come later."""
    import json

    out = tmp_path / "bundle"
    with atomic_directory(out) as tmp:
        (tmp / "manifest.json").write_text("{}")
        (tmp / "graph.onnx").write_bytes(b"g")
    assert json.loads((out / OUTPUT_MARKER).read_text())["entries"] == ["graph.onnx", "manifest.json"]
    blob = out / "cache" / "openvino" / "graph.cpu.bf16.0123" / "42.blob"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"b")
    (blob.parent / "blobs.json").write_text("{}")
    (out / "engines").mkdir()
    (out / "engines" / "graph.cuda.sm90.engine").write_bytes(b"e")
    check_output_directory(out, overwrite=True)  # what mmgen-edge adds later is fine
    (out / "notes.txt").write_text("mine")
    (out / "cache" / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"now also holds cache, notes.txt, which overwriting would delete"):
        check_output_directory(out, overwrite=True)
    with pytest.raises(FileExistsError):
        with atomic_directory(out, overwrite=True):
            raise AssertionError("the work must not start")
    assert (out / "notes.txt").read_text() == "mine"
    (out / OUTPUT_MARKER).write_text("written by mmgen-edge; --overwrite may replace this directory\n")
    check_output_directory(out, overwrite=True)  # a marker from before the entries were listed: trusted as before


def test_an_input_inside_an_output_that_does_not_exist_yet_is_refused_before_any_work(tmp_path):
    """distill-vae --work dv/w --out dv trained for the whole run and only then found that writing dv deletes dv/w."""
    with pytest.raises(ValueError, match="holds the input"):
        check_output_directory(tmp_path / "dv", overwrite=False, protect=[tmp_path / "dv" / "w"])
    check_output_directory(tmp_path / "dv", overwrite=False, protect=[tmp_path / "w"])


def test_an_overwrite_stopped_between_its_two_renames_keeps_the_old_output(tmp_path, monkeypatch):
    """SIGTERM after the old output was moved aside left no output (and the next run deleted the moved one)."""
    import mmgen_edge.runtime.fileio as fileio

    out = tmp_path / "bundle"
    with atomic_directory(out) as tmp:
        (tmp / "graph.onnx").write_text("old")
    real_rename, calls = os.rename, []

    def stopped_second_time(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # as the CLI's SIGTERM handler raises SystemExit here
        real_rename(src, dst)

    monkeypatch.setattr(fileio.os, "rename", stopped_second_time)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "graph.onnx").write_text("new")
    monkeypatch.undo()
    assert (out / "graph.onnx").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]

    # killed outright (SIGKILL) at that moment: the next run restores the moved output instead of deleting it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    moved = tmp_path / f".bundle.old-{int(dead.stdout)}"
    os.rename(out, moved)
    assert remove_stale_temporaries(out) == [] and (out / "graph.onnx").read_text() == "old" and not moved.exists()


def test_an_output_removed_halfway_keeps_its_marker_so_the_next_run_finishes_it(tmp_path, monkeypatch):
    """rmtree may list the marker first: a run killed while removing a moved-aside output left gigabytes without a
    marker, which no later run removed. The marker now goes last."""
    from mmgen_edge.runtime import fileio

    folder = tmp_path / ".bundle.old-1"
    folder.mkdir()
    (folder / OUTPUT_MARKER).write_text("ours")
    for name in ("a.onnx", "b.onnx"):
        (folder / name).write_bytes(b"x")
    from pathlib import Path

    real_unlink, seen = Path.unlink, []

    def killed_at_the_second(self, missing_ok=False):
        seen.append(self.name)
        if len(seen) == 2:
            raise KeyboardInterrupt
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        fileio.remove_output_tree(folder)
    monkeypatch.undo()
    assert (folder / OUTPUT_MARKER).is_file() and OUTPUT_MARKER not in seen
    fileio.remove_output_tree(folder)
    assert not folder.exists()


def test_a_long_file_name_still_gets_a_temporary(tmp_path):
    from mmgen_edge.runtime.fileio import atomic_file

    target = tmp_path / ("x" * 240 + ".png")
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png"


def test_an_output_a_killed_run_moved_aside_is_restored_before_the_next_run_judges_the_target(tmp_path):
    """After SIGKILL between the renames, a later run without --overwrite replaced the restored output (exit 0), and
    one failing early left the moved copy in place: restoring now comes first, so the output is judged as it was."""
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        (tmp / "model.safetensors").write_bytes(b"w")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    os.rename(out, tmp_path / f".model.old-{int(dead.stdout)}")
    with pytest.raises(FileExistsError, match="already exists"):
        check_output_directory(out, overwrite=False)
    assert (out / "model.safetensors").read_bytes() == b"w" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
