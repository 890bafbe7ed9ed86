"""The streaming API (sdk/stream.py, sdk/frame_sources.py) with a fake model: drop policy, ordering, batching, noise, errors, shutdown."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mmgen_edge.sdk.frame_sources import SourceError
from mmgen_edge.sdk.stream import Stream, StreamFrame, stream_frames, write_video

SIZE = 32  # frame side (pixels)
LATENT_SHAPE = (16, 4, 4)  # one latent (C, h, w) of the fake model
NUM_FILE_FRAMES = 20
GREY_STEP = 12  # frame i of the test video has green level i * GREY_STEP (survives mp4v within +-2)
RED_LEVEL, BLUE_LEVEL = 230, 20  # constant channels of the test video: checks the BGR -> RGB conversion
FILE_FPS = 50.0
THREAD_STOP_TIMEOUT_S = 3.0


class FakeModel:
    """Stands in for MMGenModel: records each perceive call's batch and noise, sleeps ``delay`` seconds."""

    def __init__(self, delay: float = 0.0, max_batch: int = 4):
        self.delay = delay
        self.manifest = SimpleNamespace(max_batch=max_batch)
        self.batches: list[list[np.ndarray]] = []
        self.noises: list[np.ndarray] = []
        self.kwargs: list[dict[str, object]] = []

    def latent_shape(self, n: int) -> tuple[int, ...]:
        return (n, *LATENT_SHAPE)

    def perceive(self, images: list[np.ndarray], noise: np.ndarray | None = None, **kwargs: object) -> list[SimpleNamespace]:
        assert isinstance(images, list), "a stream must call perceive with a list (one batch)"
        self.batches.append(images)
        self.noises.append(np.array(noise, copy=True))
        self.kwargs.append(kwargs)
        time.sleep(self.delay)
        return [SimpleNamespace(mean=float(im.mean())) for im in images]

    @property
    def batch_sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def frame(value: int, tag: int = 0) -> np.ndarray:
    """A flat RGB frame: channel 0 = value, channel 1 = tag (e.g. the source)."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[..., 0] = value
    image[..., 1] = tag
    return image


def frames(count: int, tag: int = 0, period: float = 0.0) -> Iterator[np.ndarray]:
    """``count`` frames (frame i has value i), one every ``period`` seconds."""
    for i in range(count):
        if period:
            time.sleep(period)
        yield frame(i, tag)


def video_index(image: np.ndarray) -> int:
    """The frame index encoded in the test video's green level."""
    return int(round(float(image[..., 1].mean()) / GREY_STEP))


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-frame mp4 (written with write_video): frame i is (RED_LEVEL, i * GREY_STEP, BLUE_LEVEL)."""
    path = tmp_path_factory.mktemp("stream") / "count.mp4"
    rgb = [np.full((SIZE, SIZE, 3), (RED_LEVEL, i * GREY_STEP, BLUE_LEVEL), np.uint8) for i in range(NUM_FILE_FRAMES)]
    assert write_video(rgb, path, FILE_FPS) == NUM_FILE_FRAMES
    return path


def collect(stream: Stream) -> list[StreamFrame]:
    with stream:
        return list(stream)


def wait_for_thread_count(expected: int, timeout: float = THREAD_STOP_TIMEOUT_S) -> int:
    deadline = time.monotonic() + timeout
    while threading.active_count() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()


# ------------------------------------------------------------------------------------ file, no drops
def test_video_file_yields_every_frame_in_order(video: Path) -> None:
    model = FakeModel(delay=1.5 / FILE_FPS)  # slower than the file's rate: the capture thread must wait, not drop
    stream = stream_frames(model, video, tasks=("depth",))  # files default to realtime=False
    out = collect(stream)
    assert [video_index(f.image) for f in out] == list(range(NUM_FILE_FRAMES))
    assert [f.frame_index for f in out] == list(range(NUM_FILE_FRAMES))
    assert all(f.source == 0 for f in out)
    first = out[0].image.reshape(-1, 3).mean(axis=0)
    assert abs(first[0] - RED_LEVEL) < 8 and abs(first[2] - BLUE_LEVEL) < 8, f"not RGB: {first}"
    stats = stream.stats
    assert stats.captured == [NUM_FILE_FRAMES] and stats.processed == [NUM_FILE_FRAMES] and stats.dropped == [0]
    assert model.kwargs[0] == {"tasks": ("depth",), "steps": None}


def test_video_file_in_realtime_mode_is_paced_and_drops(video: Path) -> None:
    model = FakeModel(delay=0.06)  # 3 file frame periods per call
    start = time.monotonic()
    stream = stream_frames(model, video, realtime=True)
    out = collect(stream)
    elapsed = time.monotonic() - start
    stats = stream.stats
    assert elapsed >= 0.8 * (NUM_FILE_FRAMES - 1) / FILE_FPS, "a realtime file must be read at its frame rate"
    assert stats.captured == [NUM_FILE_FRAMES]
    assert stats.dropped[0] > 0
    assert stats.processed[0] + stats.dropped[0] == NUM_FILE_FRAMES
    assert out[-1].frame_index == NUM_FILE_FRAMES - 1  # the newest frame is never lost at the end


# ------------------------------------------------------------------------------------ realtime drops
def test_realtime_slow_consumer_drops_old_frames_without_backlog() -> None:
    period, delay, count = 0.01, 0.05, 40
    model = FakeModel(delay=delay)
    stream = stream_frames(model, frames(count, period=period), realtime=True)
    out = collect(stream)
    stats = stream.stats
    indices = [f.frame_index for f in out]
    assert stats.captured == [count]
    assert stats.dropped[0] > 0
    assert stats.processed[0] + stats.dropped[0] == stats.captured[0]  # exact once the stream has ended
    assert stats.processed[0] == len(out)
    assert all(a < b for a, b in zip(indices, indices[1:])), indices
    assert indices[-1] == count - 1
    assert all(int(f.image[0, 0, 0]) == f.frame_index for f in out)  # the image is the frame it claims to be
    bound = (period + delay) * 3
    worst = max(f.latency for f in out)
    assert worst < bound, f"latency {worst:.3f} s >= {bound:.3f} s: a backlog built up"
    assert all(f.latency == pytest.approx(f.finished_at - f.captured_at) for f in out)


# ------------------------------------------------------------------------------------ batching, noise
def test_two_sources_are_batched_into_one_perceive_call() -> None:
    count = 6
    model = FakeModel(delay=0.02)
    stream = stream_frames(model, [frames(count, tag=0), frames(count, tag=1)])
    out = collect(stream)
    assert sum(model.batch_sizes) == 2 * count
    assert model.batch_sizes.count(2) >= count // 2, model.batch_sizes
    for batch in model.batches:  # one frame per source per call
        tags = [int(im[0, 0, 1]) for im in batch]
        assert len(set(tags)) == len(tags), tags
    for source in (0, 1):
        assert [f.frame_index for f in out if f.source == source] == list(range(count))
        assert all(int(f.image[0, 0, 1]) == f.source for f in out)
    assert stream.stats.processed == [count, count] and stream.stats.dropped == [0, 0]


def test_more_sources_than_max_batch_is_refused_before_capture() -> None:
    before = threading.active_count()
    with pytest.raises(ValueError, match="max_batch is 1"):
        stream_frames(FakeModel(max_batch=1), [frames(2), frames(2)])
    assert threading.active_count() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tasks": ("depht",)}, "depht"), ({"seed": -1}, "seed must be in"), ({"seed": 1.5}, "seed must be"),
     ({"steps": 0}, "steps must be in"), ({"steps": "4"}, "steps")],
)
def test_bad_arguments_are_refused_before_any_source_opens(video: Path, kwargs: dict, message: str) -> None:
    before = threading.active_count()
    with pytest.raises(ValueError, match=message):
        stream_frames(FakeModel(), [video], **kwargs)
    assert threading.active_count() == before  # no capture thread started, nothing left holding the source


def test_same_noise_on_every_call() -> None:
    seed = 3
    model = FakeModel()
    collect(stream_frames(model, frames(5), seed=seed, max_pending=1))
    expected = np.random.default_rng(seed).standard_normal(LATENT_SHAPE, dtype=np.float32)
    assert len(model.noises) >= 2
    for noise in model.noises:
        np.testing.assert_array_equal(noise, expected)
    other = FakeModel()
    collect(stream_frames(other, frames(1), seed=seed + 1))
    assert not np.array_equal(other.noises[0], expected)


# ------------------------------------------------------------------------------------ errors
def test_sources_that_cannot_be_opened(tmp_path: Path) -> None:
    model = FakeModel()
    missing = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        stream_frames(model, missing)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    with pytest.raises(ValueError, match="notes.mp4"):
        stream_frames(model, str(not_video))
    with pytest.raises(ValueError, match="camera 99"):
        stream_frames(model, 99)
    with pytest.raises(ValueError, match="float"):
        stream_frames(model, 2.5)


def test_opening_failure_closes_the_sources_already_opened(tmp_path: Path) -> None:
    before = threading.active_count()
    with pytest.raises(FileNotFoundError):
        stream_frames(FakeModel(), [frames(1000, period=0.001), tmp_path / "missing.mp4"])
    assert wait_for_thread_count(before) == before


def failing(after: int) -> Iterator[np.ndarray]:
    yield from frames(after)
    raise RuntimeError("sensor unplugged")


def test_capture_error_surfaces_in_the_consumer_with_the_source_named() -> None:
    model = FakeModel()
    stream = stream_frames(model, [frames(3, tag=0), failing(after=2)])
    got: list[StreamFrame] = []
    with pytest.raises(SourceError, match=r"source 1 \(iterator generator\).*sensor unplugged") as info:
        for f in stream:
            got.append(f)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.source == 1
    assert [f.frame_index for f in got if f.source == 1] == [0, 1]  # frames captured before the error come first


def test_invalid_frame_from_an_iterator_is_reported() -> None:
    bad = iter([frame(0), np.zeros((SIZE, SIZE, 4), np.uint8)])
    with pytest.raises(SourceError, match=r"source 0 .*frame 1.*shape"):
        collect(stream_frames(FakeModel(), bad))


# ------------------------------------------------------------------------------------ shutdown
@pytest.mark.parametrize("realtime", [True, False])
def test_close_stops_the_capture_threads(realtime: bool) -> None:
    before = threading.active_count()
    endless = (frame(i % 256) for i in iter(int, 1))  # never ends
    stream = stream_frames(FakeModel(), [endless, frames(10**6, period=0.001)], realtime=realtime)
    assert threading.active_count() == before + 2
    taken = [next(stream) for _ in range(4)]
    stream.close()
    assert threading.active_count() == before  # close() joined them
    stats = stream.stats
    for i in (0, 1):
        assert stats.captured[i] == stats.processed[i] + stats.dropped[i]  # waiting frames count as dropped
    assert len(taken) == 4
    with pytest.raises(StopIteration):
        next(stream)


def test_write_video_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "empty.mp4", FILE_FPS)
    with pytest.raises(ValueError, match="fps"):
        write_video([frame(0)], tmp_path / "x.mp4", 0)
    for fps in (1e9, 0.001):
        with pytest.raises(ValueError, match=r"fps must be a number in \[0.01, 1000\]"):
            write_video([frame(0)], tmp_path / "x.mp4", fps)
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(ValueError, match="frame 1"):
        write_video([frame(0), np.zeros((SIZE * 2, SIZE, 3), np.uint8)], tmp_path / "sizes.mp4", FILE_FPS)


# ------------------------------------------------------------------------------- truncated / corrupt files
def test_a_video_damaged_half_way_reports_frames_read_against_expected(corrupt_video: Path, caplog) -> None:
    from conftest import CORRUPT_VIDEO_FRAMES

    with caplog.at_level(logging.WARNING, logger="mmgen_edge.sdk.frame_sources"):
        stream = stream_frames(FakeModel(), corrupt_video)
        got = collect(stream)
    stats = stream.stats
    read = stats.captured[0]
    assert 0 < read < CORRUPT_VIDEO_FRAMES and len(got) == read == stats.processed[0]
    assert stats.expected == [CORRUPT_VIDEO_FRAMES]
    message = (
        f"source {corrupt_video} ended early: {read} of {CORRUPT_VIDEO_FRAMES} frames read (the container announces "
        f"{CORRUPT_VIDEO_FRAMES}); it is probably truncated or corrupt after frame {read}"
    )
    assert stats.warnings == [message]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [message]


def test_a_whole_video_and_a_closed_stream_do_not_warn(video: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="mmgen_edge.sdk.frame_sources"):
        whole = stream_frames(FakeModel(), video)
        assert len(collect(whole)) == NUM_FILE_FRAMES
        closed = stream_frames(FakeModel(), video)  # the consumer stops early: not the source's fault
        with closed:
            next(closed)
    assert whole.stats.expected == [NUM_FILE_FRAMES] and whole.stats.warnings == []
    assert closed.stats.expected == [NUM_FILE_FRAMES] and closed.stats.warnings == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_sized_and_unsized_iterables_report_what_they_announce() -> None:
    listed = stream_frames(FakeModel(), [frame(i) for i in range(3)])
    generated = stream_frames(FakeModel(), frames(3))
    assert len(collect(listed)) == len(collect(generated)) == 3
    assert listed.stats.expected == [3] and generated.stats.expected == [None]
    assert listed.stats.warnings == generated.stats.warnings == []


def test_fit_video_frames_puts_every_frame_on_one_writable_canvas(tmp_path: Path) -> None:
    """stream --out wrote one video from sources of several sizes (it stopped half-way at the first other size) and
    refused a 4096x2160 camera's input | maps tiles (16384 wide: over both the input limit and the encoder's)."""
    from mmgen_edge.sdk.stream import MAX_VIDEO_SIDE, fit_video_frames

    wide = np.full((40, 16384, 3), 200, np.uint8)
    with pytest.raises(ValueError, match=f"encoder takes sides up to {MAX_VIDEO_SIDE}"):
        write_video([wide], tmp_path / "wide.mp4", FILE_FPS)
    first, small, tall = wide, np.full((20, 100, 3), 90, np.uint8), np.full((400, 40, 3), 250, np.uint8)
    fitted = list(fit_video_frames([first, small, tall]))
    canvas = (round(40 * MAX_VIDEO_SIDE / 16384), MAX_VIDEO_SIDE, 3)
    assert [f.shape for f in fitted] == [canvas] * 3
    assert fitted[0].min() == 200  # the first fills the canvas
    column = fitted[2][:, :, 0].max(axis=0)  # the tall one: scaled into the height, centred, black beside
    assert column[0] == 0 and column[MAX_VIDEO_SIDE // 2] == 250
    assert write_video(fitted, tmp_path / "fitted.mp4", FILE_FPS) == 3
    same = [frame(0), frame(1)]
    assert all(np.array_equal(a, b) for a, b in zip(fit_video_frames(same), same))  # one size: unchanged
    grey, unit = np.full((20, 100), 90, np.uint8), np.full((10, 50, 3), 1.0, np.float32)  # what write_video accepts
    assert [f.shape for f in fit_video_frames([frame(0), grey, unit])] == [frame(0).shape] * 3
    assert list(fit_video_frames([np.full((20, 100, 3), 1.0, np.float32)]))[0].min() == 255
