"""Audio for LatentSync: decoding, Whisper encoder features, per-frame chunks, SyncNet mel.

Two audio representations are used:

* Whisper features (docs/audio-features.md): the 5 pre-`ln_post` hidden states of a Whisper encoder at
  50 rows per second, cut into one `[50, dim]` chunk per video frame. They condition the UNet.
* The SyncNet mel spectrogram (docs/audio-features.md): a Wav2Lip-style 80-band mel at 80 columns per
  second, cut into a 52-column window per 16 video frames. It feeds SyncNet.
"""

import hashlib
import logging
import math
import os
from pathlib import Path

import av
import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F
import whisper
import whisper.audio
import whisper.model

from latentsync.device import pick_device, pick_dtype
from latentsync.constants import INT16_SCALE, MODEL_FPS, SAMPLE_RATE
from latentsync.errors import UserError
from latentsync.io import atomic_save_torch, load_torch_file
from latentsync.video import av_reason, open_media

logger = logging.getLogger(__name__)

# Whisper features (docs/audio-features.md)
WHISPER_HOP = whisper.audio.HOP_LENGTH  # 160 samples per mel frame, 100 frames per second
WHISPER_N_FFT = whisper.audio.N_FFT  # 400
WINDOW_FRAMES = whisper.audio.N_FRAMES  # 3000 mel frames = one 30 s encoder window
ROWS_PER_SECOND = 50  # encoder rows per second (conv2 has stride 2)
MIN_SAMPLES = 2 * WHISPER_HOP  # 20 ms: one feature row (also > n_fft/2 for the reflect padding)
FEATURE_VERSION = 1  # bump when the feature computation changes (invalidates the cache)

# per-frame chunks (docs/pipeline-timing.md)
AUDIO_FEAT_LENGTH = (2, 2)  # [a0, a1] of the configs
ROWS_BEFORE = 2 * AUDIO_FEAT_LENGTH[0]  # 4 rows before the centre row
ROWS_FROM_CENTRE = 2 * (AUDIO_FEAT_LENGTH[1] + 1)  # 6 rows from the centre row on
CHUNK_ROWS = ROWS_BEFORE + ROWS_FROM_CENTRE  # 10 rows -> 10 * 5 = 50 tokens

# SyncNet mel (Wav2Lip hyper-parameters, docs/audio-features.md)
MEL_N_FFT = 800
MEL_HOP = 200  # 80 columns per second
MEL_WIN = 800
MEL_N_MELS = 80
MEL_FMIN = 55.0
MEL_FMAX = 7600.0
MEL_COLUMNS_PER_SECOND = SAMPLE_RATE // MEL_HOP
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
SYNCNET_FRAMES = 16
# Slaney mel scale: 200/3 Hz per mel below 1 kHz, then a log step of ln(6.4)/27 per mel
SLANEY_HZ_PER_MEL = 200.0 / 3
SLANEY_MIN_LOG_HZ = 1000.0
SLANEY_MIN_LOG_MEL = SLANEY_MIN_LOG_HZ / SLANEY_HZ_PER_MEL
SLANEY_LOG_STEP = float(np.log(6.4) / 27.0)


# ----------------------------------------------------------------------------------------
# decoding


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any media file to mono float32 at `sample_rate`.

    Matches an ffmpeg decode to signed 16-bit mono divided by 32768 (what the reference does).
    Raises UserError naming the file when it is missing, not media, has no audio or is empty.
    """
    with open_media(path, "audio", what="audio file") as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        pieces = []
        try:
            for frame in container.decode(stream):
                pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        except av.FFmpegError as e:
            raise UserError(f"{path}: could not decode the audio ({av_reason(e)})") from None
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.int16)
    if samples.size == 0:
        raise UserError(f"{path}: the audio stream has no samples")
    return samples.astype(np.float32) / INT16_SCALE


# ----------------------------------------------------------------------------------------
# per-frame chunks


def num_chunks(num_rows: int, fps: float = MODEL_FPS) -> int:
    """How many chunks (= output video frames) the reference makes from `num_rows` feature rows.

    Chunk i is appended before the stop test `int(i * 50 / fps) > num_rows`, so the count is
    (smallest such i) + 1: floor(T/2) + 2 at 25 fps.
    """
    if num_rows <= 0:
        raise ValueError("num_chunks needs at least one feature row")
    i = 0
    while int(i * ROWS_PER_SECOND / fps) <= num_rows:
        i += 1
    return i + 1


def chunk_indices(num_rows: int, fps: float = MODEL_FPS) -> np.ndarray:
    """Feature-row indices `[N, 10]` (int64) of every chunk: rows c-4 .. c+5, clamped to [0, T-1]."""
    n = num_chunks(num_rows, fps)
    centres = np.array([int(i * ROWS_PER_SECOND / fps) for i in range(n)], dtype=np.int64)
    offsets = np.arange(-ROWS_BEFORE, ROWS_FROM_CENTRE, dtype=np.int64)
    return np.clip(centres[:, None] + offsets[None, :], 0, num_rows - 1)


def features_to_chunks(features: torch.Tensor, fps: float = MODEL_FPS) -> torch.Tensor:
    """Cut features `[T, L, dim]` into one chunk per video frame: `[N, 10*L, dim]`.

    Token k of a chunk is row k // L, layer k % L (row-major flattening of [10, L, dim]).
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [T, layers, dim], got {tuple(features.shape)}")
    index = torch.from_numpy(chunk_indices(features.shape[0], fps)).to(features.device)
    chunks = features[index]  # [N, 10, L, dim]
    return chunks.reshape(chunks.shape[0], -1, features.shape[2])


# ----------------------------------------------------------------------------------------
# Whisper features


def _load_whisper(ckpt_path: Path) -> whisper.model.Whisper:
    """Build openai-whisper's model from its checkpoint format `{dims, model_state_dict}`."""
    ckpt = load_torch_file(ckpt_path, "Whisper checkpoint")
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise UserError(f"{ckpt_path}: not a Whisper checkpoint (expected keys 'dims' and "
                        "'model_state_dict')")
    try:
        model = whisper.model.Whisper(whisper.model.ModelDimensions(**ckpt["dims"]))
    except TypeError as e:
        raise UserError(f"{ckpt_path}: bad Whisper 'dims' ({e})") from None
    try:
        model.load_state_dict(ckpt["model_state_dict"])
    except RuntimeError as e:
        first_line = str(e).splitlines()[0]
        raise UserError(f"{ckpt_path}: weights do not match the Whisper 'dims' "
                        f"({first_line} ...)") from None
    return model


def _sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class AudioEncoder:
    """Whisper encoder features `[T, 5, dim]` and per-frame chunks, with an optional disk cache."""

    def __init__(self, whisper_ckpt_path, device=None, dtype=None, cache_dir=None):
        self.ckpt_path = Path(whisper_ckpt_path)
        model = _load_whisper(self.ckpt_path)
        self.dims = model.dims
        self.device = pick_device(None if device is None else str(device))
        if dtype is None or isinstance(dtype, str):
            dtype = pick_dtype(dtype, self.device)
        self.dtype = dtype
        # Weights stay fp32: whisper's layers cast them to the input's dtype per op and run
        # LayerNorm in fp32, as the reference does on CUDA.
        self.encoder = model.encoder.to(self.device).eval()
        del model
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._ckpt_sha256 = None

    @property
    def dim(self) -> int:
        """Width of each feature row (384 for Whisper tiny)."""
        return self.dims.n_audio_state

    def features(self, audio) -> torch.Tensor:
        """Features `[T, n_layer+1, dim]` (float32, CPU) of a file path or 16 kHz mono waveform."""
        wav = self._waveform(audio)
        if self.cache_dir is None:
            return self._compute_features(wav)
        cache_path = self.cache_dir / f"{self._cache_key(wav)}.pt"
        cached = self._read_cache(cache_path)
        if cached is not None:
            return cached
        features = self._compute_features(wav)
        self._write_cache(cache_path, features)
        return features

    def chunks(self, features: torch.Tensor, fps: float = MODEL_FPS) -> torch.Tensor:
        """One `[50, dim]` chunk per video frame at `fps` (docs/pipeline-timing.md): `[N, 50, dim]`."""
        return features_to_chunks(features, fps)

    # -- computation

    def _waveform(self, audio) -> np.ndarray:
        """A 1-d float32 16 kHz waveform from a path, numpy array or tensor."""
        if isinstance(audio, (str, os.PathLike)):
            wav = load_audio(audio)
            name = str(audio)
        else:
            wav = audio.detach().cpu().numpy() if torch.is_tensor(audio) else np.asarray(audio)
            name = "audio waveform"
            if wav.ndim != 1:
                raise ValueError(f"waveform must be 1-d mono, got shape {wav.shape}")
            wav = np.ascontiguousarray(wav, dtype=np.float32)
        if wav.size < MIN_SAMPLES:
            raise UserError(f"{name}: audio too short ({wav.size} samples at 16 kHz; "
                            f"need at least {MIN_SAMPLES})")
        return wav

    @torch.inference_mode()
    def _compute_features(self, wav: np.ndarray) -> torch.Tensor:
        """Log-mel of the whole waveform, encoded in independent 30 s windows, trimmed, joined."""
        mel = whisper.audio.log_mel_spectrogram(
            torch.from_numpy(wav), n_mels=self.dims.n_mels, device=self.device)
        total = mel.shape[1]
        parts = []
        for start in range(0, total, WINDOW_FRAMES):
            window = mel[:, start:start + WINDOW_FRAMES]
            real = window.shape[1]
            window = F.pad(window, (0, WINDOW_FRAMES - real))  # zeros in normalised units
            states = self._encode_window(window)
            parts.append(states[: real // 2].float().cpu())
        return torch.cat(parts)

    def _encode_window(self, mel: torch.Tensor) -> torch.Tensor:
        """Hidden states `[1500, n_layer+1, dim]` of one `[n_mels, 3000]` window, before ln_post."""
        enc = self.encoder
        x = mel[None].to(self.device, self.dtype)
        x = F.gelu(enc.conv1(x))
        x = F.gelu(enc.conv2(x))
        x = x.permute(0, 2, 1)
        x = (x + enc.positional_embedding).to(x.dtype)
        states = [x]
        for block in enc.blocks:
            x = block(x)
            states.append(x)
        return torch.stack(states, dim=2)[0]

    # -- cache

    def _cache_key(self, wav: np.ndarray) -> str:
        """SHA-256 over the waveform, the checkpoint file, its dims and the feature settings."""
        if self._ckpt_sha256 is None:
            self._ckpt_sha256 = _sha256_file(self.ckpt_path)
        settings = (f"v{FEATURE_VERSION}|sr{SAMPLE_RATE}|win{WINDOW_FRAMES}|{self.dtype}|"
                    f"{self._ckpt_sha256}|{sorted(vars(self.dims).items())}")
        digest = hashlib.sha256(settings.encode())
        digest.update(wav.astype("<f4", copy=False).tobytes())
        return digest.hexdigest()

    def _read_cache(self, path: Path) -> torch.Tensor | None:
        """Cached features, or None when absent; a corrupt file is ignored with a warning."""
        if not path.is_file():
            return None
        try:
            features = load_torch_file(path, "audio feature cache file")
            expected = (self.dims.n_audio_layer + 1, self.dim)
            if not (torch.is_tensor(features) and features.ndim == 3
                    and tuple(features.shape[1:]) == expected
                    and features.dtype == torch.float32):
                raise ValueError(f"unexpected content {type(features).__name__}")
        except Exception as e:
            logger.warning("%s: ignoring unreadable audio feature cache file (%s)", path, e)
            return None
        return features

    def _write_cache(self, path: Path, features: torch.Tensor) -> None:
        """Save features under a temporary name, then rename, so readers never see half a file."""
        atomic_save_torch(features.contiguous(), path)


# ----------------------------------------------------------------------------------------
# SyncNet mel spectrogram


def hz_to_mel_slaney(hz):
    """Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / SLANEY_HZ_PER_MEL
    log = SLANEY_MIN_LOG_MEL + np.log(np.maximum(hz, SLANEY_MIN_LOG_HZ) / SLANEY_MIN_LOG_HZ) / SLANEY_LOG_STEP
    return np.where(hz >= SLANEY_MIN_LOG_HZ, log, linear)


def mel_to_hz_slaney(mel):
    """Inverse of `hz_to_mel_slaney`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * SLANEY_HZ_PER_MEL
    log = SLANEY_MIN_LOG_HZ * np.exp(SLANEY_LOG_STEP * (mel - SLANEY_MIN_LOG_MEL))
    return np.where(mel >= SLANEY_MIN_LOG_MEL, log, linear)


def slaney_mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = MEL_N_FFT,
                          n_mels: int = MEL_N_MELS, fmin: float = MEL_FMIN,
                          fmax: float = MEL_FMAX) -> np.ndarray:
    """Triangular mel filters `[n_mels, 1 + n_fft//2]` (float64), Slaney scale and area norm.

    Filter i rises from band edge i to i+1 and falls to i+2, with the n_mels+2 edges evenly
    spaced in mel between fmin and fmax; each is scaled by 2 / (width in Hz) (librosa's
    `htk=False, norm='slaney'`).
    """
    fft_hz = np.linspace(0.0, sr / 2, 1 + n_fft // 2)
    edges_hz = mel_to_hz_slaney(np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax),
                                            n_mels + 2))
    widths = np.diff(edges_hz)
    offsets = edges_hz[:, None] - fft_hz[None, :]  # edge minus bin frequency
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]


def _stft_magnitude(y: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """|STFT| `[1 + n_fft//2, 1 + len(y)//hop]`: periodic Hann, centred with zero padding."""
    window = scipy.signal.get_window("hann", win, fftbins=True)
    window = np.pad(window, ((n_fft - win) // 2, n_fft - win - (n_fft - win) // 2))
    padded = np.pad(y, n_fft // 2)
    num_frames = 1 + (len(padded) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:num_frames]
    return np.abs(np.fft.rfft(frames * window, axis=1)).T


def syncnet_melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip-style normalised mel `[80, 1 + N//200]` (float64, values in [-4, 4]) of 16 kHz audio."""
    wav = np.asarray(wav, dtype=np.float64)
    if wav.ndim != 1:
        raise ValueError(f"waveform must be 1-d mono, got shape {wav.shape}")
    emphasised = scipy.signal.lfilter([1.0, -PREEMPHASIS], [1.0], wav)
    magnitude = _stft_magnitude(emphasised, MEL_N_FFT, MEL_HOP, MEL_WIN)
    mel = slaney_mel_filterbank() @ magnitude
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    scaled = 2 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE)


def mel_window_length(num_frames: int = SYNCNET_FRAMES, fps: float = MODEL_FPS) -> int:
    """Mel columns covering `num_frames` video frames: ceil(frames * 80 / fps) (52 for 16 at 25)."""
    return math.ceil(num_frames * MEL_COLUMNS_PER_SECOND / fps)


def mel_window(mel: np.ndarray, start_frame: int, num_frames: int = SYNCNET_FRAMES,
               fps: float = MODEL_FPS) -> np.ndarray | None:
    """The SyncNet mel window `[80, 52]` for video frames start_frame .. start_frame+15.

    Starts at column int(80 * start_frame / fps). Returns None when the mel is too short to
    give the full window (the reference redraws such samples); callers must check.
    """
    if start_frame < 0:
        raise ValueError(f"start_frame must be >= 0, got {start_frame}")
    start = int(MEL_COLUMNS_PER_SECOND * start_frame / fps)
    length = mel_window_length(num_frames, fps)
    if start + length > mel.shape[1]:
        return None
    return mel[:, start:start + length]
