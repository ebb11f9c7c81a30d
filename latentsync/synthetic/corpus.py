"""Write a known-truth talking-face corpus: clips whose mouths follow their speech frame by frame.

For clip i the plan (sentences, voice, rate, pitch, identity, motion seed) depends only on the
seed and i, so a larger --num_clips adds clips and a re-run skips finished ones. Sentences are
drawn without repetition for the whole corpus, and every clip belongs to one split, so train and
held-out clips never share a sentence. Per clip, in OUT/<split>/:

  NAME.mp4            25 fps H.264 with the speech (AAC)     NAME.wav       16 kHz mono speech
  NAME.mouth.csv      truth track: frame,open,width          NAME.motion.csv  head motion / light
  NAME.phonemes.csv   espeak phonemes: start,end,phoneme     NAME.json      manifest row (last)

OUT/manifest.csv lists every clip; OUT/corpus.json holds the settings the plan depends on.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latentsync.constants import DEFAULT_SEED, MODEL_FPS, SAMPLE_RATE
from latentsync.errors import UserError
from latentsync.io import atomic_open, atomic_write_text
from latentsync.synthetic.identities import CROP_SIZE, identity_names, load_identity
from latentsync.synthetic.motion import HeadMotion, random_head_motion, read_motion_csv, write_motion_csv
from latentsync.synthetic.render import render_clip
from latentsync.synthetic.sentences import unique_sentences
from latentsync.synthetic.speech import Phoneme, Speech, synthesize
from latentsync.synthetic.visemes import mouth_track, write_track_csv

VOICES = ("en-us", "en-us+m3", "en-us+f2", "en-us+f4", "en", "en+m5", "en-gb-x-rp+f3", "en-029+m2")
RATE_RANGE = (135, 185)  # espeak words per minute
PITCH_RANGE = (30, 70)  # espeak pitch 0-99
LEAD_SECONDS, GAP_SECONDS, TRAIL_SECONDS = 0.4, 0.3, 0.4  # silence before, between, after sentences
SHORTEST_SENTENCE_SECONDS = 1.5  # for reserving enough sentences to reach --min_seconds
SPLITS = ("train", "heldout")
MANIFEST, SETTINGS = "manifest.csv", "corpus.json"
PLAN_SETTINGS = ("seed", "heldout_fraction", "size", "min_seconds")
MANIFEST_COLUMNS = ("clip", "split", "text", "voice", "rate", "pitch", "identity", "n_frames", "seconds",
                    "mouth", "motion", "wav", "phonemes", "size")
MIN_SIZE, MAX_SIZE, MAX_SECONDS = 128, 1024, 60.0
WRITE_CHUNK = 16  # frames per write to the encoder


@dataclass
class CorpusOptions:
    """What `make_corpus` writes (see scripts/make_synthetic_corpus.py for the flags)."""

    output_dir: str
    num_clips: int
    seed: int = DEFAULT_SEED
    heldout_fraction: float = 0.2
    size: int = 256  # output frame side in pixels
    min_seconds: float = 0.0  # clips take more sentences (then silence) until this long
    progress: bool = True
    workers: int = 1  # clips rendered at once, each in its own process (the same clips as with 1)

    def check(self) -> None:
        """UserError naming the first bad option."""
        if self.num_clips < 1:
            raise UserError(f"--num_clips {self.num_clips}: must be at least 1")
        if not 0 <= self.heldout_fraction < 1:
            raise UserError(f"--heldout_fraction {self.heldout_fraction}: must be in [0, 1)")
        if not MIN_SIZE <= self.size <= MAX_SIZE or self.size % 2:
            raise UserError(f"--size {self.size}: must be an even number from {MIN_SIZE} to {MAX_SIZE}")
        if not 0 <= self.min_seconds <= MAX_SECONDS:
            raise UserError(f"--min_seconds {self.min_seconds}: must be from 0 to {MAX_SECONDS:g}")
        if self.workers < 1:
            raise UserError(f"--workers {self.workers}: must be at least 1")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise UserError(f"--output_dir {self.output_dir}: exists and is not a folder")


@dataclass
class ClipPlan:
    """Everything random about one clip, fixed before anything is synthesized."""

    name: str
    split: str
    sentences: list[str]  # reserved for this clip; the first ones long enough are spoken
    voice: str
    rate: int
    pitch: int
    identity: str
    motion_seed: list[int] = field(default_factory=list)


def is_heldout(index: int, fraction: float) -> bool:
    """Clips 0, 1/fraction, 2/fraction ... are held out (spread evenly, at least one if the fraction
    is above 0, stable when clips are added)."""
    return math.ceil((index + 1) * fraction) > math.ceil(index * fraction)


def plan_clips(options: CorpusOptions) -> list[ClipPlan]:
    """The plan of clips 0 .. num_clips-1 (a prefix of the plan for more clips)."""
    sentence_rng = np.random.default_rng(options.seed)
    per_clip = max(1, math.ceil(options.min_seconds / SHORTEST_SENTENCE_SECONDS))
    identities, used, plans = identity_names(), set(), []
    for index in range(options.num_clips):
        rng = np.random.default_rng([options.seed, index])
        plans.append(ClipPlan(
            name=f"clip_{index:05d}",
            split=SPLITS[1] if is_heldout(index, options.heldout_fraction) else SPLITS[0],
            sentences=unique_sentences(sentence_rng, per_clip, used),
            voice=str(rng.choice(VOICES)), rate=int(rng.integers(*RATE_RANGE, endpoint=True)),
            pitch=int(rng.integers(*PITCH_RANGE, endpoint=True)), identity=str(rng.choice(identities)),
            motion_seed=[options.seed, index, 1]))
    return plans


def speak_clip(plan: ClipPlan, min_seconds: float) -> tuple[Speech, str]:
    """The clip's speech (silence around and between sentences, padded to whole video frames and
    to `min_seconds`) and the text actually spoken."""
    pieces, phonemes, spoken = [np.zeros(round(LEAD_SECONDS * SAMPLE_RATE), np.float32)], [], []
    position = LEAD_SECONDS
    for sentence in plan.sentences:
        if spoken:
            pieces.append(np.zeros(round(GAP_SECONDS * SAMPLE_RATE), np.float32))
            position += GAP_SECONDS
        speech = synthesize(sentence, plan.voice, plan.rate, plan.pitch)
        phonemes += [Phoneme(p.name, p.start + position, p.end + position) for p in speech.phonemes]
        pieces.append(speech.samples)
        position += speech.seconds
        spoken.append(sentence)
        if position + TRAIL_SECONDS >= min_seconds:
            break
    seconds = max(position + TRAIL_SECONDS, min_seconds)
    n_samples = round(math.ceil(seconds * MODEL_FPS - 1e-9) / MODEL_FPS * SAMPLE_RATE)
    samples = np.concatenate(pieces)
    samples = np.pad(samples, (0, max(n_samples - len(samples), 0)))[:n_samples]
    return Speech(samples=samples, phonemes=phonemes), " ".join(spoken)


def render_size(size: int) -> int:
    """Side of the identity photo a clip of `size` pixels is rendered from (then downscaled)."""
    return max(size, min(2 * size, CROP_SIZE))


def render_video(path: Path, identity_name: str, motion: HeadMotion, track: np.ndarray,
                 size: int) -> None:
    """Encode the rendered frames to a video-only mp4 (temp name, then rename)."""
    from latentsync.video import VideoWriter

    identity = load_identity(identity_name, render_size(size))
    with VideoWriter(path, MODEL_FPS, size, size) as writer:
        chunk = []
        for frame in render_clip(identity, motion, track, size):
            chunk.append(frame)
            if len(chunk) == WRITE_CHUNK:
                writer.write(np.stack(chunk))
                chunk = []
        if chunk:
            writer.write(np.stack(chunk))


def rerender(corpus_dir: str | os.PathLike, row: dict, track: np.ndarray,
             out_path: str | os.PathLike) -> None:
    """Render manifest `row`'s identity and head motion with another mouth `track` (e.g. the
    truth of a dub: a different sentence's track, cut to the clip with visemes.fit_track) to a
    video-only mp4. The motion holds its last frame if the track is longer than the clip."""
    motion = read_motion_csv(Path(corpus_dir) / row["motion"]).fit(len(track))
    render_video(Path(out_path), row["identity"], motion, track, int(row["size"]))


def write_phonemes_csv(path: Path, phonemes: list[Phoneme]) -> None:
    """CSV start,end,phoneme (seconds from the clip's start, espeak mnemonics)."""
    lines = ["start,end,phoneme"] + [f"{p.start:.4f},{p.end:.4f},{p.name}" for p in phonemes]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_clip(plan: ClipPlan, options: CorpusOptions) -> dict:
    """Synthesize, render and write one clip's files; return its manifest row (also NAME.json,
    written last: its presence marks the clip finished)."""
    from latentsync.video import mux_audio, write_audio_wav

    folder = Path(options.output_dir) / plan.split
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / plan.name
    speech, text = speak_clip(plan, options.min_seconds)
    n_frames = round(speech.seconds * MODEL_FPS)
    track = mouth_track(speech.phonemes, n_frames)
    motion = random_head_motion(n_frames, np.random.default_rng(plan.motion_seed))
    paths = {key: base.with_name(plan.name + suffix) for key, suffix in (
        ("wav", ".wav"), ("mouth", ".mouth.csv"), ("motion", ".motion.csv"),
        ("phonemes", ".phonemes.csv"), ("clip", ".mp4"), ("video", ".video.mp4"))}
    write_audio_wav(paths["wav"], speech.samples, SAMPLE_RATE)
    write_track_csv(paths["mouth"], track)
    write_motion_csv(paths["motion"], motion)
    write_phonemes_csv(paths["phonemes"], speech.phonemes)
    try:
        render_video(paths["video"], plan.identity, motion, track, options.size)
        mux_audio(paths["video"], paths["wav"], paths["clip"])
    finally:
        paths["video"].unlink(missing_ok=True)
    relative = {key: str(path.relative_to(options.output_dir)) for key, path in paths.items()}
    row = dict(clip=relative["clip"], split=plan.split, text=text, voice=plan.voice, rate=plan.rate,
               pitch=plan.pitch, identity=plan.identity, n_frames=n_frames,
               seconds=round(speech.seconds, 4),
               mouth=relative["mouth"], motion=relative["motion"], wav=relative["wav"],
               phonemes=relative["phonemes"], size=options.size)
    atomic_write_text(base.with_name(plan.name + ".json"), json.dumps(row))
    return row


def _check_settings(options: CorpusOptions) -> None:
    """Record the plan's settings in OUT/corpus.json, or refuse a folder made with others."""
    path = Path(options.output_dir) / SETTINGS
    settings = {key: getattr(options, key) for key in PLAN_SETTINGS}
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [key for key in PLAN_SETTINGS if old.get(key) != settings[key]]
        if changed:
            differences = ", ".join(f"{key} {old.get(key)}, not {settings[key]}" for key in changed)
            raise UserError(f"--output_dir {options.output_dir}: was made with other settings "
                            f"({differences}); use a new folder")
    else:
        atomic_write_text(path, json.dumps(settings, indent=1))


def write_manifest(output_dir: str | os.PathLike, rows: list[dict]) -> Path:
    """OUT/manifest.csv with MANIFEST_COLUMNS, one row per clip (temp name, then rename)."""
    path = Path(output_dir) / MANIFEST
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_manifest(output_dir: str | os.PathLike) -> list[dict]:
    """The rows of OUT/manifest.csv (all values as strings)."""
    with open(Path(output_dir) / MANIFEST, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def make_corpus(options: CorpusOptions) -> list[dict]:
    """Write every planned clip not written yet, then the manifest; return the manifest rows."""
    from tqdm import tqdm

    options.check()
    try:
        Path(options.output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output_dir {options.output_dir}: cannot create it ({exc.strerror})") from None
    _check_settings(options)
    plans = plan_clips(options)
    rows = {}
    for plan in plans:
        done = Path(options.output_dir) / plan.split / f"{plan.name}.json"
        if done.exists():
            rows[plan.name] = json.loads(done.read_text(encoding="utf-8"))
    todo = [plan for plan in plans if plan.name not in rows]
    bar = tqdm(total=len(plans), initial=len(rows), desc="synthetic clips", unit="clip", disable=not options.progress)
    with bar:
        if options.workers == 1 or len(todo) < 2:
            for plan in todo:
                rows[plan.name] = write_clip(plan, options)
                bar.update(1)
        else:  # fresh processes (spawn): espeak-ng and MediaPipe keep per-process state
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(options.workers, len(todo)), mp_context=context) as pool:
                futures = {pool.submit(write_clip, plan, options): plan.name for plan in todo}
                for future in as_completed(futures):
                    rows[futures[future]] = future.result()
                    bar.update(1)
    rows = [rows[plan.name] for plan in plans]
    write_manifest(options.output_dir, rows)
    return rows
