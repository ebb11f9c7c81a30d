"""Voice activity per video frame, from the energy of the driving audio.

Where nobody speaks the mouth should not move: the pipeline either feeds the model digital
silence there (`silence="mute"`) or keeps the original frames (`silence="keep"`).
"""

import numpy as np

from latentsync.constants import SAMPLE_RATE
ABSOLUTE_FLOOR_DB = -50.0  # quieter than this (dBFS) is never speech
ABOVE_NOISE_DB = 15.0  # speech is this much louder than the noise floor ...
BELOW_PEAK_DB = 35.0  # ... and within this range of the loudest frame
NOISE_PERCENTILE = 10
HANGOVER_S = 0.2  # speech extends this long before and after loud frames
MIN_PAUSE_S = 0.3  # shorter pauses inside speech are filled


def frame_levels_db(wav: np.ndarray, fps: float, num_frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS level in dBFS of the audio under each video frame (-inf for digital silence)."""
    levels = np.full(num_frames, -np.inf)
    for i in range(num_frames):
        a, b = int(round(i * sample_rate / fps)), int(round((i + 1) * sample_rate / fps))
        part = wav[a:b].astype(np.float64)
        if part.size:
            rms = np.sqrt(np.mean(part * part))
            levels[i] = 20 * np.log10(rms) if rms > 0 else -np.inf
    return levels


def speech_frames(wav: np.ndarray, fps: float, num_frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Boolean [num_frames]: True where the driving audio carries speech."""
    levels = frame_levels_db(wav, fps, num_frames, sample_rate)
    finite = levels[np.isfinite(levels)]
    if finite.size == 0:
        return np.zeros(num_frames, dtype=bool)
    noise = np.percentile(finite, NOISE_PERCENTILE)
    threshold = max(ABSOLUTE_FLOOR_DB, min(noise + ABOVE_NOISE_DB, finite.max() - BELOW_PEAK_DB))
    loud = levels > threshold
    return _fill_pauses(_dilate(loud, int(round(HANGOVER_S * fps))), int(round(MIN_PAUSE_S * fps)))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for shift in range(1, radius + 1):
        out[shift:] |= mask[:-shift]
        out[:-shift] |= mask[shift:]
    return out


def _fill_pauses(mask: np.ndarray, max_gap: int) -> np.ndarray:
    out = mask.copy()
    idx = np.flatnonzero(mask)
    for a, b in zip(idx[:-1], idx[1:]):
        if 1 < b - a <= max_gap + 1:
            out[a:b] = True
    return out


def mute_silence(wav: np.ndarray, speech: np.ndarray, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A copy of `wav` with the samples under non-speech frames set to zero (frames cover all samples)."""
    out = wav.copy()
    for i in np.flatnonzero(~speech):
        a, b = int(round(i * sample_rate / fps)), int(round((i + 1) * sample_rate / fps))
        out[a:b] = 0
    return out
