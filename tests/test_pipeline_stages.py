"""The overlapped pipeline (face pass, model, writer in their own threads, dub_run.py): incremental
segment planning, errors in any worker stop the whole run cleanly, and segment_batch gives the same frames."""

import threading

import numpy as np
import pytest

from latentsync.errors import ExternalToolError, UserError
from latentsync.pipelines import dub_run
from latentsync.pipelines.dub_run import FaceTrack, Schedule
from latentsync.pipelines.lipsync_pipeline import LipsyncOptions
from latentsync.pipelines.results import AUDIO, DECODE, DENOISE, ENCODE, FACE_PASS, MUX, UNET, WRITE, RunHooks
from latentsync.pipelines.segments import SegmentPlanner, plan_segments
from latentsync.video import VideoWriter
from test_pipeline import FAST, cli, pipe, small_clip, speech_wav, tiny  # noqa: F401  (fixtures)


# -- planning while the face pass runs ---------------------------------------------------------

@pytest.mark.parametrize("tail", ["overlap", "short"])
def test_segments_planned_value_by_value_are_those_of_the_whole_mask(tail):
    rng = np.random.default_rng(0)
    for trial in range(500):
        mask = rng.random(int(rng.integers(0, 90))) < (0.97 if trial % 2 else rng.random())
        length = int(rng.integers(1, 20))
        planner, streamed = SegmentPlanner(length, tail), []
        for value in mask:
            streamed += planner.feed(bool(value))
        streamed += planner.finish()
        expected = plan_segments(mask, length, tail)
        assert [(s.frames, s.write_from) for s in streamed] == [(s.frames, s.write_from) for s in expected]


def test_full_segments_are_planned_before_the_face_pass_ends(tmp_path):
    track = FaceTrack.create(tmp_path, 40, 8, keep_frames=False)
    schedule = Schedule(track, 40, None, LipsyncOptions(num_frames=16, show_progress=False))
    track.has_face[:] = True
    track.ready = 20  # the face pass is at frame 20 of 40
    assert not schedule.group_ready(1) and not schedule.planned_past(0)  # the predicates only read: nothing planned
    schedule.advance()
    assert schedule.group_ready(1) and [s.frames for s in schedule.planned] == [list(range(16))]
    assert schedule.total is None and schedule.planned_past(19) and not schedule.planned_past(20)
    track.ready, track.done = 40, True
    assert not schedule.group_ready(2)  # (planned only by advance)
    schedule.advance()
    assert schedule.group_ready(2) and schedule.total == 3
    # a batch only holds segments of one length: 16 + 16 here, the short tail never joins them
    (tmp_path / "b").mkdir()
    track2 = FaceTrack.create(tmp_path / "b", 40, 8, keep_frames=False)
    track2.has_face[:] = True
    track2.ready, track2.done = 40, True
    short = Schedule(track2, 40, None, LipsyncOptions(num_frames=16, segment_tail="short", show_progress=False))
    short.advance()
    assert short.group_ready(3)
    assert [len(s.frames) for s in short.take(3)] == [16, 16] and [len(s.frames) for s in short.take(3)] == [8]
    track.close()
    track2.close()


# -- an error anywhere stops everything ---------------------------------------------------------

def live_threads() -> set:
    """Running threads but tqdm's progress-bar monitor (tqdm's own, it ends by itself)."""
    return {t for t in threading.enumerate() if t.name != "tqdm_monitor"}


class ExplodingTracker(dub_run.FaceTracker):
    """Raises a UserError on the 10th frame, as a detector refusing a frame would."""

    def track(self, frame):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 10:
            raise UserError("clip.mp4: frame 9: the face detector failed")
        return super().track(frame)


def test_face_pass_error_ends_the_run_with_its_one_line_message(tiny, small_clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dub_run, "FaceTracker", ExplodingTracker)
    work, out = tmp_path / "work", tmp_path / "out.mp4"
    work.mkdir()
    before = live_threads()
    assert cli(tiny, small_clip, speech_wav(tmp_path, 1.0), out, "--temp_dir", work) == 2
    err = capsys.readouterr().err  # (after the progress bars the CLI draws)
    assert err.endswith("\nerror: clip.mp4: frame 9: the face detector failed\n") and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*partial*")) and list(work.iterdir()) == []
    assert live_threads() <= before  # every worker thread was joined


class FailingHooks(RunHooks):
    """Calls `fail` whenever the writer resumes its work (in the writer's worker thread)."""

    def __init__(self, fail):
        self.fail = fail

    def begin(self, phase):
        if phase == WRITE:
            self.fail()


@pytest.mark.parametrize("where", ["writer", "model", "progress callback", "hook"])
def test_error_in_any_worker_stops_all_of_them(pipe, small_clip, tmp_path, monkeypatch, where):
    failure = {"writer": ExternalToolError("encode out.mp4: ffmpeg failed (exit code 1): disk full"),
               "model": RuntimeError("out of memory"), "progress callback": KeyboardInterrupt(),
               "hook": RuntimeError("a timing hook failed")}[where]
    calls = {"n": 0}

    def fail_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise failure

    if where == "writer":
        write = VideoWriter.write
        monkeypatch.setattr(VideoWriter, "write", lambda self, frames: fail_on_third() or write(self, frames))
    elif where == "model":
        denoise = pipe.denoise
        monkeypatch.setattr(pipe, "denoise", lambda *a, **k: fail_on_third() or denoise(*a, **k))
    work, out = tmp_path / "work", tmp_path / "out.mp4"
    work.mkdir()
    before = live_threads()
    progress = (lambda event: fail_on_third()) if where == "progress callback" else None
    hooks = FailingHooks(fail_on_third) if where == "hook" else None
    audio = speech_wav(tmp_path, 2.0)  # 50 frames: 4 segments, so the model fails in the middle
    with pytest.raises(type(failure)) as raised:
        pipe(small_clip, audio, out, LipsyncOptions(**FAST, temp_dir=str(work)), progress=progress, hooks=hooks)
    assert raised.value is failure  # the stage's own exception, message unchanged
    assert calls["n"] == 3
    assert not out.exists() and list(work.iterdir()) == []
    assert live_threads() <= before  # every worker thread was joined


# -- timing hooks -------------------------------------------------------------------------------

class RecordingHooks(RunHooks):
    """Every begin / end with the thread it came from, and the generated faces by output frame."""

    def __init__(self):
        self.events, self.faces = [], {}

    def begin(self, phase):
        self.events.append(("begin", phase, threading.current_thread().name))

    def end(self, phase):
        self.events.append(("end", phase, threading.current_thread().name))

    def face(self, frame, face):
        self.faces[frame] = face


def test_hooks_are_told_when_each_phase_begins_and_ends_from_its_thread(pipe, small_clip, tmp_path):
    hooks = RecordingHooks()
    audio = speech_wav(tmp_path, 1.0)  # 25 frames: segments 0..15 and the overlapping tail 9..24
    result = pipe(small_clip, audio, tmp_path / "o.mp4", LipsyncOptions(**FAST), hooks=hooks)
    assert (result.segments, result.frames_without_face) == (2, 0)
    by_thread = {}
    for kind, phase, thread in hooks.events:
        by_thread.setdefault(thread, []).append((kind, phase))
    assert set(by_thread) == {threading.main_thread().name, "latentsync-faces", "latentsync-writer"}
    for thread, events in by_thread.items():  # begins and ends pair up and nest, in every thread
        open_phases = []
        for kind, phase in events:
            if kind == "begin":
                open_phases.append(phase)
            else:
                assert open_phases.pop() == phase, (thread, events)
        assert open_phases == [], thread
    main = [phase for kind, phase in by_thread[threading.main_thread().name] if kind == "begin"]
    assert main[0] == AUDIO and main[-1] == MUX
    assert [p for p in main if p != UNET] == [AUDIO] + [ENCODE, DENOISE, DECODE] * 2 + [MUX]  # segment_batch 1
    assert main.count(UNET) == FAST["inference_steps"] * result.segments  # one guided call per step
    assert by_thread["latentsync-faces"] == [("begin", FACE_PASS), ("end", FACE_PASS)]
    writes = [phase for kind, phase in by_thread["latentsync-writer"] if kind == "begin"]
    assert writes == [WRITE] * (result.num_frames + 1)  # resumed after each of the 25 waits for a frame
    assert sorted(hooks.faces) == list(range(25))  # every generated face, as handed to the writer
    assert all(face.shape == (pipe.resolution, pipe.resolution, 3) and np.abs(face).max() <= 1
               for face in hooks.faces.values())


# -- several segments per UNet call ------------------------------------------------------------

def dub_frames(pipe, clip, audio, out, monkeypatch, **options):
    """(frames handed to the encoder, batch size of every UNet sampling loop, threads that sent progress)."""
    frames, batches, senders = [], [], set()
    write, denoise = VideoWriter.write, pipe.denoise
    monkeypatch.setattr(VideoWriter, "write", lambda self, f: frames.append(np.array(f)) or write(self, f))
    monkeypatch.setattr(pipe, "denoise", lambda latents, *a, **k: batches.append(latents.shape[0])
                        or denoise(latents, *a, **k))
    result = pipe(clip, audio, out, LipsyncOptions(**FAST, **options),
                  progress=lambda event: senders.add(threading.current_thread()))
    monkeypatch.undo()
    return result, np.stack(frames), batches, senders


def test_segment_batch_gives_the_frames_of_one_segment_at_a_time(pipe, small_clip, tmp_path, monkeypatch):
    audio = speech_wav(tmp_path, 1.0)  # 25 frames: segments 0..15 and the overlapping tail 9..24
    one, frames1, batches1, senders1 = dub_frames(pipe, small_clip, audio, tmp_path / "b1.mp4", monkeypatch)
    two, frames2, batches2, senders2 = dub_frames(pipe, small_clip, audio, tmp_path / "b2.mp4", monkeypatch,
                                                  segment_batch=2)
    assert batches1 == [1, 1] and batches2 == [2]  # both segments went through the UNet together
    assert one.segments == two.segments == 2 and len(frames1) == len(frames2) == 25
    assert (two.output_path.exists(), len(frames2)) == (True, one.num_frames)
    diff = np.abs(frames1.astype(int) - frames2.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float noise of the batched convolutions at most
    assert np.abs(frames1.astype(int) - np.roll(frames1, 1, axis=0).astype(int)).max() > 1  # (frames do differ)
    assert senders1 == senders2 == {threading.main_thread()}  # progress comes from the calling thread


def test_segment_batch_is_an_option_with_bounds():
    with pytest.raises(UserError, match=r"segment_batch must be >= 1 \(got 0\)"):
        LipsyncOptions(segment_batch=0)
