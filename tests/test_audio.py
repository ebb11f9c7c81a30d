"""Audio: decoding, Whisper features and chunks against the reference fixtures, cache, SyncNet mel."""

import logging
import os
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import whisper

from latentsync import audio
from latentsync.errors import UserError

from conftest import MEDIA, REFERENCE, need

SMALL = REFERENCE / "audio_small_whisper"
CKPT = SMALL / "whisper_small_random.pt"
DEMO1_WAV = MEDIA / "demo1_audio.wav"
DEMO1_MP4 = MEDIA / "demo1_video.mp4"


def load_fixture(name: str) -> dict:
    from safetensors.torch import load_file

    path = REFERENCE / name / "io.safetensors"
    need(path)
    return load_file(str(path))


@pytest.fixture(scope="module")
def encoder():
    need(CKPT)
    return audio.AudioEncoder(CKPT, device="cpu")


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * audio.SAMPLE_RATE))).astype(np.float32)


# ---------------------------------------------------------------------------- chunks


def test_chunk_indices_match_reference():
    ref = load_fixture("audio_chunks")
    num_rows = ref["features"].shape[0]
    np.testing.assert_array_equal(audio.chunk_indices(num_rows, 25), ref["chunk_indices_fps25"])
    np.testing.assert_array_equal(audio.chunk_indices(num_rows, 30), ref["chunk_indices_fps30"])


def test_chunks_match_reference_exactly():
    ref = load_fixture("audio_chunks")
    chunks = audio.features_to_chunks(ref["features"], fps=25)
    assert chunks.shape == (13, 50, 384)
    assert torch.equal(chunks, ref["chunks_fps25"])


def test_chunk_token_order_is_row_major():
    features = torch.arange(30 * 5 * 2, dtype=torch.float32).reshape(30, 5, 2)
    chunks = audio.features_to_chunks(features, fps=25)
    # frame 3: centre row 6, rows 2..11; token 5*r + l is row 2+r, layer l
    for r in range(10):
        for layer in range(5):
            assert torch.equal(chunks[3, 5 * r + layer], features[2 + r, layer])


def test_chunk_count_for_9_6_seconds():
    assert audio.num_chunks(480, fps=25) == 242
    assert audio.chunk_indices(480, fps=25).shape == (242, 10)
    for rows in (1, 2, 23, 479, 480, 481, 1765):
        assert audio.num_chunks(rows, 25) == rows // 2 + 2


# ---------------------------------------------------------------------------- Whisper features


@pytest.mark.parametrize("name", ["demo1", "long35"])
def test_features_match_reference(encoder, name):
    ref = load_fixture("audio_small_whisper")
    path = DEMO1_WAV if name == "demo1" else SMALL / "long_35s.wav"
    need(path)
    features = encoder.features(path)
    expected = ref[f"{name}_features"]
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    assert features.shape == expected.shape  # long35: 1500 + 265 rows from two windows
    err = (features - expected).abs().max().item()
    print(f"{name} features max abs error {err:.2e}")
    assert err < 1e-4

    chunks = encoder.chunks(features, fps=25)
    indices = ref[f"{name}_chunk_indices"].long().numpy()
    np.testing.assert_array_equal(audio.chunk_indices(features.shape[0], 25), indices)
    assert chunks.shape == (indices.shape[0], 50, encoder.dim)
    assert (chunks[:8] - ref[f"{name}_chunks_first8"]).abs().max() < 1e-4
    assert (chunks[-8:] - ref[f"{name}_chunks_last8"]).abs().max() < 1e-4


def test_features_from_waveform_equal_features_from_file(encoder):
    need(DEMO1_WAV)
    wav = audio.load_audio(DEMO1_WAV)[: 3 * audio.SAMPLE_RATE]
    from_array = encoder.features(wav)
    from_tensor = encoder.features(torch.from_numpy(wav))
    assert from_array.shape == (150, 5, 64)
    assert torch.equal(from_array, from_tensor)


def test_too_short_audio_is_a_user_error(encoder):
    with pytest.raises(UserError, match="too short"):
        encoder.features(np.zeros(100, np.float32))


def test_missing_or_corrupt_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not found"):
        audio.AudioEncoder(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pt"):
        audio.AudioEncoder(bad)
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {}}, wrong)
    with pytest.raises(UserError, match="dims"):
        audio.AudioEncoder(wrong)


def test_checkpoint_with_mismatched_weights_is_rejected(tmp_path):
    need(CKPT)
    ckpt = torch.load(CKPT, map_location="cpu", weights_only=True)
    del ckpt["model_state_dict"]["encoder.blocks.0.attn.query.weight"]
    path = tmp_path / "truncated.pt"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="truncated.pt"):
        audio.AudioEncoder(path)


# ---------------------------------------------------------------------------- cache


def test_cache_hit_skips_the_encoder(tmp_path, monkeypatch):
    need(CKPT)
    enc = audio.AudioEncoder(CKPT, device="cpu", cache_dir=tmp_path / "cache")
    wav = noise(1.0, seed=1)
    first = enc.features(wav)
    files = list((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("encoder ran although the features were cached")

    monkeypatch.setattr(enc, "_encode_window", fail)
    assert torch.equal(enc.features(wav), first)
    with pytest.raises(AssertionError, match="encoder ran"):
        enc.features(noise(1.0, seed=2))  # different audio: a different cache entry


def test_different_audio_gives_different_cache_entry(tmp_path):
    need(CKPT)
    enc = audio.AudioEncoder(CKPT, device="cpu", cache_dir=tmp_path)
    a = enc.features(noise(1.0, seed=1))
    b = enc.features(noise(1.0, seed=2))
    assert not torch.equal(a, b)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert not list(tmp_path.glob("*.partial*"))  # no leftovers from the atomic write


def test_corrupt_cache_file_is_recomputed(tmp_path, caplog):
    need(CKPT)
    enc = audio.AudioEncoder(CKPT, device="cpu", cache_dir=tmp_path)
    wav = noise(1.0, seed=3)
    expected = enc.features(wav)
    (cache_file,) = tmp_path.glob("*.pt")
    cache_file.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="latentsync.audio"):
        again = enc.features(wav)
    assert torch.equal(again, expected)
    assert "cache" in caplog.text
    assert torch.equal(torch.load(cache_file, weights_only=True), expected)  # overwritten


# ---------------------------------------------------------------------------- decoding


def ffmpeg_decode(path: Path) -> np.ndarray:
    """The reference's decode: ffmpeg to s16 mono 16 kHz, divided by 32768."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(path),
           "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le", "-ar", "16000", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.int16).astype(np.float32) / 32768


def test_load_audio_from_mp4_with_aac():
    need(DEMO1_MP4)
    wav = audio.load_audio(DEMO1_MP4)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) / 16000 - 10.0) < 0.05
    assert 0.01 < np.abs(wav).max() <= 1.0
    reference = ffmpeg_decode(DEMO1_MP4)
    assert len(wav) == len(reference)
    assert np.abs(wav - reference).max() <= 2 / 32768


def test_load_audio_wav_is_exact():
    need(DEMO1_WAV)
    wav = audio.load_audio(DEMO1_WAV)
    assert len(wav) == 153600  # 9.6 s
    np.testing.assert_array_equal(wav, ffmpeg_decode(DEMO1_WAV))


def test_load_audio_errors_name_the_file(tmp_path):
    fake = tmp_path / "speech.wav"
    fake.write_text("this is not audio\n" * 10)
    with pytest.raises(UserError, match="speech.wav"):
        audio.load_audio(fake)
    with pytest.raises(UserError, match="missing.wav.*not found"):
        audio.load_audio(tmp_path / "missing.wav")


def test_load_audio_video_without_sound(tmp_path):
    silent = tmp_path / "silent.mp4"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi",
           "-i", "color=size=64x64:rate=25", "-t", "1", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(silent)]
    subprocess.run(cmd, check=True)
    with pytest.raises(UserError, match="silent.mp4: contains no audio stream"):
        audio.load_audio(silent)


# ---------------------------------------------------------------------------- SyncNet mel


def test_slaney_filterbank_reproduces_whisper_filters():
    """whisper's mel_filters.npz is librosa's Slaney filterbank (sr 16k, n_fft 400, 0-8 kHz)."""
    path = os.path.join(os.path.dirname(whisper.__file__), "assets", "mel_filters.npz")
    with np.load(path) as stored:
        for n_mels in (80, 128):
            ours = audio.slaney_mel_filterbank(16000, 400, n_mels, 0.0, 8000.0)
            assert ours.shape == stored[f"mel_{n_mels}"].shape
            np.testing.assert_allclose(ours, stored[f"mel_{n_mels}"], rtol=0, atol=1e-6)


def test_syncnet_filterbank_band_edges():
    filters = audio.slaney_mel_filterbank()  # n_fft 800, 55-7600 Hz
    assert filters.shape == (80, 401)
    bin_hz = 16000 / 800
    nonzero = np.nonzero(filters[0])[0]
    assert nonzero[0] * bin_hz > 55  # first filter starts above fmin
    last = np.nonzero(filters[-1])[0]
    assert last[-1] * bin_hz < 7600  # last filter ends below fmax
    peaks = filters.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0)  # filters ordered by frequency
    # 55 Hz is in the linear part (200/3 Hz per mel): 0.825 mel; edges evenly spaced in mel
    # up to 7600 Hz; so the first filter peaks 1 mel step above 55 Hz
    top = 15 + np.log(7600 / 1000) / (np.log(6.4) / 27)
    first_centre_hz = (0.825 + (top - 0.825) / 81) * 200 / 3
    assert abs(peaks[0] * bin_hz - first_centre_hz) <= bin_hz / 2
    assert abs(audio.hz_to_mel_slaney(1000.0) - 15.0) < 1e-12
    assert abs(audio.hz_to_mel_slaney(6400.0) - 42.0) < 1e-9  # 15 + 27 mels per factor 6.4


def test_stft_matches_torch():
    y = noise(0.5, seed=4).astype(np.float64)
    ours = audio._stft_magnitude(y, 800, 200, 800)
    theirs = torch.stft(torch.from_numpy(y), 800, 200, window=torch.hann_window(800, dtype=torch.float64),
                        center=True, pad_mode="constant", return_complex=True).abs().numpy()
    assert ours.shape == theirs.shape == (401, 1 + len(y) // 200)
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_syncnet_mel_shape_range_and_pitch():
    for n in (16000, 16123, 153600):
        mel = audio.syncnet_melspectrogram(noise(n / 16000, seed=5))
        assert mel.shape == (80, 1 + n // 200) and mel.dtype == np.float64
        assert mel.min() >= -4 and mel.max() <= 4
    assert np.all(audio.syncnet_melspectrogram(np.zeros(8000)) == -4)  # silence floors
    t = np.arange(16000) / 16000
    tone = audio.syncnet_melspectrogram(0.5 * np.sin(2 * np.pi * 1000 * t))
    band = tone[:, 10:-10].mean(axis=1).argmax()
    filters = audio.slaney_mel_filterbank()
    assert filters[band, 1000 // 20] == filters[:, 1000 // 20].max()  # loudest band holds 1 kHz
    assert tone[band, 10:-10].min() > 0  # a loud tone is well above the floor


def test_mel_window():
    need(DEMO1_WAV)
    mel = audio.syncnet_melspectrogram(audio.load_audio(DEMO1_WAV))
    assert mel.shape == (80, 769)  # 9.6 s at 80 columns per second, +1
    window = audio.mel_window(mel, start_frame=10)
    assert window.shape == (80, 52)
    np.testing.assert_array_equal(window, mel[:, 32:84])  # int(80 * 10 / 25) = 32
    assert audio.mel_window(mel, 3, num_frames=25).shape == (80, 80)
    last_ok = (769 - 52) * 25 // 80
    assert audio.mel_window(mel, last_ok) is not None
    assert audio.mel_window(mel, 235) is None  # int(80*235/25)=752, 752+52 > 769


def test_syncnet_mel_follows_documented_steps():
    """The SyncNet mel of docs/audio-features.md step by step, with torch's STFT: pre-emphasis, |STFT|, mel, dB, [-4, 4]."""
    x = noise(0.7, seed=6).astype(np.float64)
    emphasised = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    stft = torch.stft(torch.from_numpy(emphasised), 800, 200,
                      window=torch.hann_window(800, dtype=torch.float64), center=True,
                      pad_mode="constant", return_complex=True).abs().numpy()
    db = 20 * np.log10(np.maximum(1e-5, audio.slaney_mel_filterbank() @ stft)) - 20
    expected = np.clip(8 * (db + 100) / 100 - 4, -4, 4)
    np.testing.assert_allclose(audio.syncnet_melspectrogram(x), expected, rtol=0, atol=1e-9)
