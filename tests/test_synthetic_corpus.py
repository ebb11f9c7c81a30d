"""Known-truth synthetic corpus (latentsync/synthetic/, scripts/make_synthetic_corpus.py).

The truth track must move with the speech, the rendered faces must be found by the project's
own face stage in every frame, and the mouth MediaPipe measures on the written videos must follow
the truth track; train and held-out clips never share a sentence.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.face.detectors import make_face_detector
from latentsync.synthetic.corpus import CorpusOptions, plan_clips, read_manifest, rerender
from latentsync.synthetic.measure import measure_mouth, measure_mouth_opening
from latentsync.synthetic.speech import synthesize
from latentsync.synthetic.visemes import OPEN, WIDTH, fit_track, mouth_track, read_track_csv
from latentsync.video import count_frames, iter_frames, probe_video, read_frames
from scripts import make_synthetic_corpus

from conftest import REPO

NUM_CLIPS = 3  # heldout_fraction 0.5 -> clips 0 and 2 held out, clip 1 train
MIN_CORRELATION = 0.8
MIN_WIDTH_CORRELATION = 0.5


def _track_of(text: str, **voice):
    speech = synthesize(text, **voice)
    n_frames = int(np.ceil(speech.seconds * MODEL_FPS))
    return speech, mouth_track(speech.phonemes, n_frames)


def _at(track: np.ndarray, phoneme) -> np.ndarray:
    """Track row of the frame holding the phoneme's middle."""
    frame = int((phoneme.start + phoneme.end) / 2 * MODEL_FPS)
    return track[min(frame, len(track) - 1)]


def _frames(path):
    return (frame for chunk in iter_frames(path, fps=MODEL_FPS) for frame in chunk)


@pytest.mark.parametrize("voice", [dict(voice="en-us", rate=160, pitch=50),
                                   dict(voice="en+f4", rate=185, pitch=70)])
def test_track_closes_on_lip_consonants_and_opens_on_vowels(voice):
    speech, track = _track_of("mama papa bob", **voice)
    closures = [p for p in speech.phonemes if p.name in ("m", "b", "p")]
    assert len(closures) >= 6
    assert max(_at(track, p)[OPEN] for p in closures) < 0.15
    speech, track = _track_of("ah oh ah", **voice)
    vowels = [p for p in speech.phonemes if p.name.lstrip("',") in ("A:", "oU", "a")]
    assert len(vowels) == 3
    assert min(_at(track, p)[OPEN] for p in vowels) > 0.35  # "oh" closes towards "oo"
    assert track[0, OPEN] > 0.5 and track[-1, OPEN] < 0.5  # speech starts at once, ends in a pause
    assert len(speech.samples) == pytest.approx(speech.seconds * SAMPLE_RATE)


def test_rounded_and_spread_vowels_differ_in_width_not_opening():
    _, oo = _track_of("oo who two")
    _, ee = _track_of("ee he tea")
    middle = lambda t: t[2:-3]  # leave out the closing pause at the end
    assert middle(oo)[:, WIDTH].mean() < 0.25 and middle(ee)[:, WIDTH].mean() > 0.75
    assert abs(middle(oo)[:, OPEN].mean() - middle(ee)[:, OPEN].mean()) < 0.15


def test_fit_track_cuts_or_rests():
    track = np.array([[0.9, 0.2], [0.5, 0.9]], dtype=np.float32)
    assert fit_track(track, 1).tolist() == [[pytest.approx(0.9), pytest.approx(0.2)]]
    longer = fit_track(track, 4)
    assert longer.shape == (4, 2) and longer[2:, OPEN].max() == 0
    assert longer[2:, WIDTH].tolist() == [0.5, 0.5]


def test_plan_is_reproducible_and_grows_by_appending(tmp_path):
    small = plan_clips(CorpusOptions(str(tmp_path), 4, seed=5, min_seconds=5))
    large = plan_clips(CorpusOptions(str(tmp_path), 9, seed=5, min_seconds=5))
    assert small == large[:4]
    assert plan_clips(CorpusOptions(str(tmp_path), 9, seed=6, min_seconds=5)) != large
    sentences = [s for plan in large for s in plan.sentences]
    assert len(sentences) == len(set(sentences))
    assert {p.split for p in large} == {"train", "heldout"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    args = ["--output_dir", str(out), "--num_clips", str(NUM_CLIPS), "--seed", "3",
            "--heldout_fraction", "0.5", "--no_progress"]
    assert make_synthetic_corpus.main(args) == 0
    return out, args


def test_corpus_files_and_manifest(corpus):
    out, _ = corpus
    rows = read_manifest(out)
    assert [row["split"] for row in rows] == ["heldout", "train", "heldout"]
    for row in rows:
        info = probe_video(out / row["clip"])
        assert (info.width, info.height, info.fps, info.has_audio) == (256, 256, MODEL_FPS, True)
        n_frames = int(row["n_frames"])
        assert count_frames(out / row["clip"]) == n_frames == len(read_track_csv(out / row["mouth"]))
        assert n_frames >= 2 * MODEL_FPS  # a sentence of 4+ words with pauses around it
        wav, rate = soundfile.read(out / row["wav"])
        assert rate == SAMPLE_RATE and len(wav) == n_frames * SAMPLE_RATE // MODEL_FPS
        assert row["identity"] and row["voice"] and row["text"].endswith(".")
        with open(out / row["phonemes"], newline="") as f:
            phonemes = list(csv.DictReader(f))
        assert float(phonemes[0]["start"]) >= 0.3 and float(phonemes[-1]["end"]) <= float(row["seconds"])


def test_train_and_heldout_share_no_sentence(corpus):
    out, _ = corpus
    sentences = {"train": set(), "heldout": set()}
    for row in read_manifest(out):
        sentences[row["split"]].update(s.strip() for s in row["text"].split(".") if s.strip())
    assert sentences["train"] and sentences["heldout"]
    assert not sentences["train"] & sentences["heldout"]


def test_face_found_in_every_frame_and_mouth_follows_truth(corpus):
    out, _ = corpus
    detector = make_face_detector("mediapipe")
    try:
        for row in read_manifest(out):
            measured = measure_mouth(_frames(out / row["clip"]), detector)
            assert not np.isnan(measured).any(), f"{row['clip']}: no face in some frames"
            truth = read_track_csv(out / row["mouth"])
            assert np.corrcoef(measured[:, 0], truth[:, OPEN])[0, 1] > MIN_CORRELATION, row["clip"]
            # the width degree shows too (less cleanly: an open jaw also pulls the corners in)
            width_correlation = np.corrcoef(measured[:, 1], truth[:, WIDTH])[0, 1]
            assert width_correlation > MIN_WIDTH_CORRELATION, row["clip"]
    finally:
        detector.close()


def test_rerender_with_another_sentence_follows_the_new_track(corpus, tmp_path):
    out, _ = corpus
    rows = read_manifest(out)
    clip, other = rows[0], rows[2]
    n_frames = min(int(clip["n_frames"]), int(other["n_frames"]))
    new_track = fit_track(read_track_csv(out / other["mouth"]), n_frames)
    rerender(out, clip, new_track, tmp_path / "dub_truth.mp4")
    frames = read_frames(tmp_path / "dub_truth.mp4", 0, n_frames)
    opening = measure_mouth_opening(frames)
    assert len(frames) == n_frames and not np.isnan(opening).any()
    assert np.corrcoef(opening, new_track[:, OPEN])[0, 1] > MIN_CORRELATION
    original = read_frames(out / clip["clip"], 0, 1)[0].astype(float)
    # same identity, head and light: the first frame (mouth closed in both) barely differs
    assert np.abs(frames[0].astype(float) - original).mean() < 4


def test_rerun_skips_finished_clips(corpus):
    out, args = corpus
    rows = read_manifest(out)
    stamps = {row["clip"]: os.stat(out / row["clip"]).st_mtime_ns for row in rows}
    assert make_synthetic_corpus.main(args) == 0
    assert read_manifest(out) == rows
    assert {row["clip"]: os.stat(out / row["clip"]).st_mtime_ns for row in rows} == stamps
    settings = json.loads((out / "corpus.json").read_text())
    assert settings["seed"] == 3


def test_workers_write_the_same_corpus(corpus, tmp_path):
    """Clips rendered in two processes are the ones one process renders, in the same manifest order."""
    out, args = corpus
    parallel = tmp_path / "parallel"
    assert make_synthetic_corpus.main([*args[:1], str(parallel), *args[2:], "--workers", "2"]) == 0
    rows = read_manifest(out)
    assert read_manifest(parallel) == rows
    for row in rows:
        assert (parallel / row["motion"]).read_bytes() == (out / row["motion"]).read_bytes()
        # espeak-ng's timing depends by a few samples on what its process spoke before, so the
        # tracks may differ in the last digits; each clip's truth is the one stored with it
        one, two = read_track_csv(out / row["mouth"]), read_track_csv(parallel / row["mouth"])
        assert one.shape == two.shape and np.abs(one - two).max() < 0.1
        assert soundfile.info(parallel / row["wav"]).frames == soundfile.info(out / row["wav"]).frames
        assert count_frames(parallel / row["clip"]) == int(row["n_frames"])


@pytest.mark.parametrize("extra, fragment", [
    (["--num_clips", "0"], "--num_clips 0"),
    (["--num_clips", "two"], "--num_clips"),
    (["--num_clips", "2", "--size", "100"], "--size 100"),
    (["--num_clips", "2", "--heldout_fraction", "1"], "--heldout_fraction 1"),
    (["--num_clips", "2", "--workers", "0"], "--workers 0"),
])
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, capsys, extra, fragment):
    assert _exit_code(["--output_dir", str(tmp_path / "c"), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]
    assert not (tmp_path / "c").exists()


def _exit_code(argv) -> int:
    """main's return code, or the code of the SystemExit argparse raises."""
    try:
        return make_synthetic_corpus.main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def test_command_line_reports_a_folder_made_with_other_settings(corpus):
    out, _ = corpus
    command = [sys.executable, "-m", "scripts.make_synthetic_corpus", "--output_dir", str(out),
               "--num_clips", "2", "--seed", "4", "--heldout_fraction", "0.5"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --output_dir {out}: was made with other settings (seed 3, not 4); use a new folder"]
