"""Dubs of held-out clips and their controls, and the scores of every variant.

Held-out clip i (sorted by name) is dubbed with the speech of held-out clip i+1 (the "new"
sentence, cut to clip i's length so the speech is never longer than the video; a short excerpt
starts just before the new sentence's first opening, see speech_start); the controls are
the input video unchanged, the model with zeroed audio, the model driven by clip i+2's speech
(a third sentence) and the truth: clip i's identity and head motion rendered with the new
sentence's mouth track (latentsync/synthetic/corpus.rerender). Every variant is scored against
the new sentence: its truth mouth track and its speech. Files per clip in WORK/dubs/<clip>/;
each finished file (and scores.json) is kept, so an interrupted dubbing step resumes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.io import atomic_write_text

VARIANTS = ("dub", "input", "zero_audio", "other_audio", "truth")
# An excerpt's new speech starts this many frames before the new sentence's mouth first opens
# (its leading silence is cut): every clip starts with closed lips, and in a short excerpt the
# shared closed start made even the unchanged input correlate with the new track (0.27 on 48 frames).
EXCERPT_LEAD_FRAMES = 2
OPENING_THRESHOLD = 0.05  # truth opening above which the lips count as open
TRUTH_TRACK = "truth.mouth.csv"  # the new sentence's truth track as the dub's output frames follow it
SOURCE_TRACK = "source.mouth.csv"  # the source clip's own track under the same output frames (for the leak)
MODEL_VARIANTS = {"dub": "speech.wav", "zero_audio": "zero.wav", "other_audio": "other.wav"}


def dub_pairs(rows: list[dict], max_dubs: int) -> list[tuple[dict, dict, dict]]:
    """(clip, new sentence, third sentence) rows of the held-out clips."""
    heldout = sorted((r for r in rows if r["split"] == "heldout"), key=lambda r: r["clip"])
    if len(heldout) < 3:
        raise ValueError(f"the dubs need at least 3 held-out clips, the corpus has {len(heldout)}")
    n = len(heldout)
    return [(heldout[i], heldout[(i + 1) % n], heldout[(i + 2) % n]) for i in range(min(n, max_dubs))]


def clip_name(row: dict) -> str:
    return Path(row["clip"]).stem


def speech_start(track_open: np.ndarray, max_frames: int) -> int:
    """First frame of the new sentence a dub uses: 0 for a whole-clip dub (max_frames 0), else
    EXCERPT_LEAD_FRAMES before the truth track first opens."""
    opened = np.flatnonzero(track_open > OPENING_THRESHOLD)
    if not max_frames or not len(opened):
        return 0
    return max(int(opened[0]) - EXCERPT_LEAD_FRAMES, 0)


def _new_track(corpus: Path, new: dict, max_frames: int) -> tuple[np.ndarray, int]:
    """The new sentence's truth track [n, 2] from the frame the dub starts at, and that frame."""
    from latentsync.synthetic.visemes import OPEN, read_track_csv

    track = read_track_csv(corpus / new["mouth"])
    start = speech_start(track[:, OPEN], max_frames)
    return track[start:], start


def _fit(samples: np.ndarray, n: int) -> np.ndarray:
    return np.pad(samples[:n], (0, max(n - len(samples), 0))).astype(np.float32)


def prepare_inputs(corpus: Path, folder: Path, clip: dict, new: dict, third: dict, max_frames: int = 0) -> int:
    """speech.wav (new sentence cut to the clip; if `max_frames` is not 0, an excerpt of that many
    frames from just before its first opening, speech_start), zero.wav, other.wav (third sentence,
    same length), the truth track of the output frames (TRUTH_TRACK) and its rendering truth.mp4, and
    the source clip's own track (SOURCE_TRACK) in `folder`; returns the number of output frames."""
    from latentsync.audio import load_audio
    from latentsync.synthetic.corpus import rerender
    from latentsync.synthetic.visemes import fit_track, read_track_csv, write_track_csv
    from latentsync.video import write_audio_wav

    folder.mkdir(parents=True, exist_ok=True)
    per_frame = SAMPLE_RATE // MODEL_FPS
    frames = min(int(clip["n_frames"]), max_frames) if max_frames else int(clip["n_frames"])
    new_track, start = _new_track(corpus, new, max_frames)
    speech = load_audio(corpus / new["wav"])[start * per_frame:(start + frames) * per_frame]
    n_out = math.ceil(len(speech) * MODEL_FPS / SAMPLE_RATE)
    for name, samples in (("speech.wav", speech), ("zero.wav", np.zeros_like(speech)),
                          ("other.wav", _fit(load_audio(corpus / third["wav"]), len(speech)))):
        if not (folder / name).exists():
            write_audio_wav(folder / name, samples, SAMPLE_RATE)
    track = fit_track(new_track, n_out)
    if not (folder / TRUTH_TRACK).exists():
        write_track_csv(folder / TRUTH_TRACK, track)
    if not (folder / SOURCE_TRACK).exists():  # the dub shows the clip from its first frame on
        write_track_csv(folder / SOURCE_TRACK, fit_track(read_track_csv(corpus / clip["mouth"]), n_out))
    if not (folder / "truth.mp4").exists():
        rerender(corpus, clip, track, folder / "truth.mp4")
    return n_out


def make_dubs(pipeline, options, corpus: Path, folder: Path, clip: dict) -> None:
    """The model's three outputs for one clip (skipped where the file exists)."""
    for variant, wav in MODEL_VARIANTS.items():
        out = folder / f"{variant}.mp4"
        if out.exists():
            continue
        temp = folder / f".{variant}.partial.mp4"
        pipeline(str(corpus / clip["clip"]), str(folder / wav), str(temp), options)
        os.replace(temp, out)


def read_all(path: Path, limit: int) -> np.ndarray:
    """The first `limit` frames (uint8 RGB) of a video at the model's frame rate."""
    from latentsync.video import iter_frames

    chunks, count = [], 0
    for chunk in iter_frames(path, fps=MODEL_FPS):
        chunks.append(chunk)
        count += len(chunk)
        if count >= limit:
            break
    return np.concatenate(chunks)[:limit]


@dataclass
class Truth:
    """What every variant of one dub is scored against: the new sentence's mouth-opening track,
    speech and speech frames, the truth rendering's frames with their mouth track (boxes, measured
    opening and texture), and the source clip's own opening track."""

    track: np.ndarray
    speech: np.ndarray
    speaking: np.ndarray
    frames: np.ndarray
    mouth: object  # latentsync.eval.mouth.MouthTrack of `frames`
    source_track: np.ndarray

    @property
    def boxes(self) -> list:
        return self.mouth.boxes


def load_truth(folder: Path, n_out: int, detector) -> Truth:
    """The Truth of the dub in `folder` (made by prepare_inputs)."""
    from latentsync.audio import load_audio
    from latentsync.eval.mouth import measure_mouth_track
    from latentsync.synthetic.visemes import OPEN, read_track_csv
    from latentsync.vad import speech_frames

    frames = read_all(folder / "truth.mp4", n_out)
    speech = load_audio(folder / "speech.wav")
    return Truth(track=read_track_csv(folder / TRUTH_TRACK)[:n_out, OPEN], speech=speech,
                 speaking=speech_frames(speech, MODEL_FPS, n_out), frames=frames,
                 mouth=measure_mouth_track(frames, detector),
                 source_track=read_track_csv(folder / SOURCE_TRACK)[:n_out, OPEN])


def score_video(path: Path, truth: Truth, syncnet, syncnet_config, detector) -> dict:
    """Mouth-opening correlation, LSE-C / LSE-D / offset, mouth SSIM / PSNR, open ratio, texture
    ratio and leak correlation of one video."""
    from benchmarks.learnability_parts import scoring
    from latentsync.eval.mouth import correlation, leak_correlation, open_ratio, texture_ratio

    frames = read_all(path, len(truth.track))
    mouth, faces = scoring.face_pass(frames, int(syncnet_config["data"]["resolution"]), detector)
    sync = scoring.sync_scores(syncnet, faces, truth.speech, syncnet_config)
    ssim, psnr = scoring.mouth_similarity(frames, truth.frames, truth.boxes)
    return dict(mouth_correlation=correlation(mouth.opening, truth.track), lse_c=sync["lse_c"],
                lse_d=sync["lse_d"], offset=sync["offset"], mouth_ssim=ssim, mouth_psnr=psnr,
                open_ratio=open_ratio(mouth.opening, truth.mouth.opening, truth.speaking),
                texture_ratio=texture_ratio(mouth.texture, truth.mouth.texture),
                leak_correlation=leak_correlation(mouth.opening, truth.source_track),
                opening=[None if not np.isfinite(x) else round(float(x), 4) for x in mouth.opening])


def score_clip(corpus: Path, folder: Path, clip: dict, new: dict, n_out: int, syncnet, syncnet_config,
               detector) -> dict:
    """Scores of every variant of one clip against the new sentence (cached in scores.json)."""
    cached = folder / "scores.json"
    if cached.exists():
        return json.loads(cached.read_text())
    truth = load_truth(folder, n_out, detector)
    sources = {"input": corpus / clip["clip"], "truth": folder / "truth.mp4",
               **{v: folder / f"{v}.mp4" for v in MODEL_VARIANTS}}
    scores = dict(clip=clip_name(clip), new_sentence=clip_name(new), frames=n_out)
    for variant in VARIANTS:
        scores[variant] = score_video(sources[variant], truth, syncnet, syncnet_config, detector)
    scores["truth_track"] = [round(float(x), 4) for x in truth.track]
    atomic_write_text(cached, json.dumps(scores))
    return scores
