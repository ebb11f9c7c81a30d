"""Text to speech with phoneme timings: espeak-ng (from the `espeakng-loader` wheel) via ctypes.

The wheel ships libespeak-ng 1.52 and its voice data, so this works offline. espeak-ng keeps one
global engine per process: `synthesize` initialises it once (synchronous output, phoneme events
on), collects the 22,050 Hz samples and the phoneme events of a text through a callback, and
resamples the audio to 16 kHz. Phoneme names are espeak's own mnemonics for English
("m", "a", "aI", "u:", "_:" for a pause ...); `latentsync.synthetic.visemes` maps them to mouth shapes.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from math import gcd

import numpy as np
from scipy.signal import resample_poly

from latentsync.constants import INT16_SCALE, SAMPLE_RATE
from latentsync.errors import UserError

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 1
EVENT_LIST_TERMINATED = 0
EVENT_PHONEME = 7
CHARS_UTF8 = 1
POS_CHARACTER = 1
PARAM_RATE, PARAM_PITCH = 1, 3  # espeak_PARAMETER values
PEAK_LEVEL = 0.9  # loudest sample after normalisation


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT of speak_lib.h."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass
class Phoneme:
    """One phoneme of the synthesized speech: espeak mnemonic and its time span in seconds."""

    name: str
    start: float
    end: float


@dataclass
class Speech:
    """16 kHz mono float32 samples in [-1, 1] and the phonemes that were spoken."""

    samples: np.ndarray
    phonemes: list[Phoneme]

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


class _Engine:
    """The process-wide espeak-ng library, initialised on first use."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as exc:
            raise UserError(f"espeakng-loader: not installed ({exc}); pip install espeakng-loader") from exc
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data_path = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path,
                                               INITIALIZE_PHONEME_EVENTS)
        if self.rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.rate})")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[float, str]] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            if events[i].type == EVENT_PHONEME:
                name = events[i].id.string.decode("ascii", "replace")
                self._events.append((events[i].audio_position / 1000.0, name))
            i += 1
        return 0  # continue synthesis

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, list]:
        """int16 samples at `self.rate` and [(start seconds, phoneme)] for `text`."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise UserError(f"voice {voice!r}: not an espeak-ng voice")
            self.lib.espeak_SetParameter(PARAM_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(PARAM_PITCH, int(pitch), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8") + b"\0"
            self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return samples, list(self._events)


_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def _phoneme_spans(events: list, seconds: float) -> list[Phoneme]:
    """Events give start times only: each phoneme lasts until the next one (or the end)."""
    events = sorted(events, key=lambda e: e[0])
    spans = []
    for i, (start, name) in enumerate(events):
        end = events[i + 1][0] if i + 1 < len(events) else seconds
        if end > start:
            spans.append(Phoneme(name=name.strip(), start=start, end=min(end, seconds)))
    return spans


def synthesize(text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50) -> Speech:
    """Speak `text` with an espeak-ng `voice` (e.g. "en-us", "en-us+f3"), `rate` in words per
    minute and `pitch` 0-99; return 16 kHz samples normalised to PEAK_LEVEL and timed phonemes."""
    engine = _engine()
    raw, events = engine.speak(text, voice, rate, pitch)
    factor = gcd(SAMPLE_RATE, engine.rate)
    samples = resample_poly(raw.astype(np.float32) / INT16_SCALE, SAMPLE_RATE // factor, engine.rate // factor)
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak > 0:
        samples = samples * (PEAK_LEVEL / peak)
    samples = samples.astype(np.float32)
    return Speech(samples=samples, phonemes=_phoneme_spans(events, len(samples) / SAMPLE_RATE))
