"""latentsync/eval/mouth.py and scripts/eval_mouth.py: open ratio, texture ratio, leak."""

import cv2
import numpy as np
import pytest

from latentsync.eval.mouth import (leak_correlation, measure_mouth_track, mouth_box, open_ratio, texture_energy,
                                   texture_ratio)
from latentsync.video import VideoWriter, iter_frames
from scripts import eval_mouth
from tests.conftest import MEDIA, need

FRAMES = 20


def test_open_ratio_counts_speech_frames_with_a_face():
    truth = np.array([0.1, 0.2, 0.2, np.nan, 0.4])
    dub = np.array([0.05, 0.1, 0.1, 0.3, np.nan])
    assert open_ratio(dub, truth) == pytest.approx(0.25 / 0.5)
    speech = np.array([False, True, True, True])  # frame 4 lies past the speech: silent
    assert open_ratio(dub, truth, speech) == pytest.approx(0.2 / 0.4)
    assert np.isnan(open_ratio(dub, np.zeros(5)))  # a truth that never opens has no ratio


def test_texture_ratio_and_leak():
    assert texture_ratio(np.array([1.0, 3.0, np.nan]), np.array([2.0, 6.0, 5.0])) == pytest.approx(0.5)
    source = np.sin(np.arange(30) / 3.0)
    assert leak_correlation(source * 2 + 1, source) == pytest.approx(1.0)
    assert leak_correlation(np.ones(30), source) == 0.0
    assert abs(leak_correlation(np.cos(np.arange(30) * 1.7), source)) < 0.5


def test_texture_energy_falls_with_blur():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    box = (8, 8, 56, 56)
    sharp, blurred = texture_energy(frame, box), texture_energy(cv2.GaussianBlur(frame, (7, 7), 2.0), box)
    assert blurred < 0.2 * sharp
    assert np.isnan(texture_energy(frame, (0, 0, 4, 4))) and np.isnan(texture_energy(frame, None))


def test_mouth_box_is_clipped_to_the_frame():
    points = np.zeros((468, 2))
    points[61], points[291] = (0, 50), (40, 50)  # mouth corners, 40 px apart
    points[13], points[14] = (20, 48), (20, 52)
    assert mouth_box(points, 60, 100) == (0, 26, 52, 60)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """The first FRAMES frames of demo1 as they are and with a blurred copy, with demo1's sound."""
    folder = tmp_path_factory.mktemp("mouth")
    frames = next(iter_frames(need(MEDIA / "demo1_video.mp4"), fps=25, chunk_size=FRAMES))
    paths = {}
    for name, clip in (("truth", frames), ("blurred", np.stack([cv2.GaussianBlur(f, (9, 9), 3.0) for f in frames]))):
        paths[name] = folder / f"{name}.mp4"
        with VideoWriter(paths[name], 25, clip.shape[2], clip.shape[1], crf=10) as writer:
            for frame in clip:
                writer.write(frame)
    return paths


def test_a_video_against_itself_scores_one(clips):
    track = measure_mouth_track(next(iter_frames(clips["truth"], fps=25, chunk_size=FRAMES)))
    assert np.isfinite(track.opening).sum() >= FRAMES - 2 and np.isfinite(track.texture).sum() >= FRAMES - 2
    assert open_ratio(track.opening, track.opening) == pytest.approx(1.0)
    assert texture_ratio(track.texture, track.texture) == pytest.approx(1.0)


def test_eval_mouth_command(clips, capsys):
    audio = str(need(MEDIA / "demo1_audio.wav"))
    scores = eval_mouth.run(eval_mouth.parse_args(["--video_path", str(clips["blurred"]), "--truth_path",
                                                   str(clips["truth"]), "--source_path", str(clips["truth"]),
                                                   "--audio_path", audio]))
    assert scores["texture_ratio"] < 0.5  # blur removes most of the mouth's fine detail
    assert 0.5 < scores["open_ratio"] < 1.5 and scores["leak_correlation"] > 0.5  # same mouth, blurred
    assert "texture_ratio" in capsys.readouterr().out


def test_eval_mouth_names_a_missing_file(tmp_path, capsys):
    assert eval_mouth.main(["--video_path", str(tmp_path / "dub.mp4"), "--truth_path", str(tmp_path)]) == 2
    assert "dub.mp4: file not found" in capsys.readouterr().err
