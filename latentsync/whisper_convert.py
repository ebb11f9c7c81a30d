"""A CTranslate2 Whisper model (`model.bin`) -> openai-whisper's checkpoint `{"dims", "model_state_dict"}`.

CTranslate2's binary format (version 6, as its converters write it; little-endian):
    version u32, spec name (u16 length + bytes, NUL-terminated), spec revision u32,
    variable count u32, then per variable: name (u16 length + bytes), rank u8, dims u32 x rank,
    dtype id u8, byte count u32, data; then alias count u32 and (alias name, target name) pairs.

The Whisper spec (`WhisperSpec`, revision 3) names its layers differently from openai-whisper and
fuses some projections; `openai_state_dict` maps them back:
    self-attention `linear_0` [3d, d] = query / key / value (the key part of the bias is all zeros:
    openai's key projection has no bias), `linear_1` = out;
    decoder cross-attention `linear_0` = query, `linear_1` [2d, d] = key / value, `linear_2` = out;
    `decoder/projection/weight` is an alias of the token embedding (openai ties them too).
Scalars of the spec (activation, num_heads, alignment heads, ...) are configuration, not weights.

Only numpy and torch are needed (no ctranslate2). Used by scripts/convert_whisper.py.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from latentsync.errors import UserError

MODEL_FILE = "model.bin"  # the weights file inside a CTranslate2 model folder
BINARY_VERSION = 6
WHISPER_SPEC = "WhisperSpec"
# CTranslate2's DataType ids; bfloat16 has no numpy type and is read as raw 16-bit words
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
MAX_NAME = 4096  # longer "names" mean the file is not this format


@dataclass
class Ct2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray | torch.Tensor]
    aliases: dict[str, str]


class _Reader:
    """Reads the format's fields; any shortfall is a UserError naming the file."""

    def __init__(self, stream: BinaryIO, path: Path):
        self.stream, self.path = stream, path

    def bytes(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise UserError(f"{self.path}: not a CTranslate2 model (file ends early)")
        return data

    def u8(self) -> int:
        return self.bytes(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.bytes(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.bytes(4))[0]

    def string(self) -> str:
        n = self.u16()
        if n > MAX_NAME:
            raise UserError(f"{self.path}: not a CTranslate2 model (implausible name length {n})")
        try:
            return self.bytes(n).decode("utf-8").rstrip("\0")
        except UnicodeDecodeError:
            raise UserError(f"{self.path}: not a CTranslate2 model (a name is not text)") from None


def model_file(source: str | os.PathLike) -> Path:
    """`source` itself, or the `model.bin` inside a model folder; UserError when neither exists."""
    path = Path(source)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise UserError(f"{path}: file not found (give a CTranslate2 model folder or its {MODEL_FILE})")
    return path


def read_ct2_model(source: str | os.PathLike) -> Ct2Model:
    """Every variable and alias of a CTranslate2 model file; UserError for any other file."""
    path = model_file(source)
    with open(path, "rb") as stream:
        read = _Reader(stream, path)
        version = read.u32()
        if version != BINARY_VERSION:
            raise UserError(f"{path}: not a CTranslate2 model of binary version {BINARY_VERSION} "
                            f"(header says {version})")
        spec, revision, count = read.string(), read.u32(), read.u32()
        variables = {}
        for _ in range(count):
            name = read.string()
            dims = [read.u32() for _ in range(read.u8())]
            dtype_id, size = read.u8(), read.u32()
            variables[name] = _array(read.bytes(size), dims, dtype_id, path, name)
        aliases = {}
        for _ in range(read.u32()):
            alias = read.string()
            aliases[alias] = read.string()
    return Ct2Model(spec, revision, variables, aliases)


def _array(data: bytes, dims: list[int], dtype_id: int, path: Path, name: str) -> np.ndarray | torch.Tensor:
    if dtype_id not in DTYPES:
        raise UserError(f"{path}: variable {name} has unknown data type id {dtype_id}")
    if DTYPES[dtype_id] == "bfloat16":
        words = torch.from_numpy(np.frombuffer(data, dtype=np.int16).copy())
        return words.view(torch.bfloat16).float().reshape(dims)
    array = np.frombuffer(data, dtype=DTYPES[dtype_id])
    if array.size != int(np.prod(dims)):
        raise UserError(f"{path}: variable {name} holds {array.size} values for shape {dims}")
    return array.reshape(dims)


def openai_checkpoint(model: Ct2Model, path: str | os.PathLike = "model") -> dict:
    """`{"dims", "model_state_dict"}` as `whisper.load_model` and latentsync.audio read them (float16
    as stored; UserError if `model` is not a Whisper spec)."""
    if model.spec != WHISPER_SPEC:
        raise UserError(f"{path}: a CTranslate2 {model.spec or 'unnamed'} model, not a Whisper model")
    weights = {name: _tensor(value) for name, value in model.variables.items() if np.ndim(value) > 0}
    for alias, target in model.aliases.items():
        weights.setdefault(alias, weights[target])
    try:
        dims = _dims(model, weights)
        state = _state_dict(weights, dims)
    except KeyError as missing:
        raise UserError(f"{path}: Whisper model without variable {missing.args[0]}") from None
    except ValueError as bad:
        raise UserError(f"{path}: {bad}") from None
    return {"dims": dims, "model_state_dict": state}


def _tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))


def _scalar(model: Ct2Model, name: str) -> int:
    return int(np.asarray(model.variables[name]).item())


def _layer_count(weights: dict, side: str) -> int:
    found = {int(m.group(1)) for name in weights if (m := re.match(rf"{side}/layer_(\d+)/", name))}
    return max(found) + 1 if found else 0


def _dims(model: Ct2Model, weights: dict) -> dict:
    return dict(
        n_mels=weights["encoder/conv1/weight"].shape[1],
        n_audio_ctx=weights["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=weights["encoder/conv1/weight"].shape[0],
        n_audio_head=_scalar(model, "encoder/num_heads"),
        n_audio_layer=_layer_count(weights, "encoder"),
        n_vocab=weights["decoder/embeddings/weight"].shape[0],
        n_text_ctx=weights["decoder/position_encodings/encodings"].shape[0],
        n_text_state=weights["decoder/embeddings/weight"].shape[1],
        n_text_head=_scalar(model, "decoder/num_heads"),
        n_text_layer=_layer_count(weights, "decoder"),
    )


def _norm(weights: dict, src: str, dst: str) -> dict:
    return {f"{dst}.weight": weights[f"{src}/gamma"], f"{dst}.bias": weights[f"{src}/beta"]}


def _linear(weights: dict, src: str, dst: str, bias: bool = True) -> dict:
    out = {f"{dst}.weight": weights[f"{src}/weight"]}
    if bias:
        out[f"{dst}.bias"] = weights[f"{src}/bias"]
    return out


def _split(weights: dict, src: str, names: tuple[str, ...], dst: str) -> dict:
    """A fused projection -> one Linear per name; the key's bias (zeros in a correct file) is dropped."""
    out = {}
    for name, w, b in zip(names, weights[f"{src}/weight"].chunk(len(names)), weights[f"{src}/bias"].chunk(len(names))):
        out[f"{dst}.{name}.weight"] = w.clone()
        if name == "key":
            if torch.count_nonzero(b):
                raise ValueError(f"{src}: the key bias is not zero (openai-whisper's key projection has none)")
        else:
            out[f"{dst}.{name}.bias"] = b.clone()
    return out


def _block(weights: dict, src: str, dst: str, cross: bool) -> dict:
    state = {}
    state.update(_split(weights, f"{src}/self_attention/linear_0", ("query", "key", "value"), f"{dst}.attn"))
    state.update(_linear(weights, f"{src}/self_attention/linear_1", f"{dst}.attn.out"))
    state.update(_norm(weights, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln"))
    if cross:
        state.update(_linear(weights, f"{src}/attention/linear_0", f"{dst}.cross_attn.query"))
        state.update(_split(weights, f"{src}/attention/linear_1", ("key", "value"), f"{dst}.cross_attn"))
        state.update(_linear(weights, f"{src}/attention/linear_2", f"{dst}.cross_attn.out"))
        state.update(_norm(weights, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln"))
    state.update(_linear(weights, f"{src}/ffn/linear_0", f"{dst}.mlp.0"))
    state.update(_linear(weights, f"{src}/ffn/linear_1", f"{dst}.mlp.2"))
    state.update(_norm(weights, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln"))
    return state


def _state_dict(weights: dict, dims: dict) -> dict:
    state = {"encoder.positional_embedding": weights["encoder/position_encodings/encodings"]}
    state.update(_linear(weights, "encoder/conv1", "encoder.conv1"))
    state.update(_linear(weights, "encoder/conv2", "encoder.conv2"))
    for i in range(dims["n_audio_layer"]):
        state.update(_block(weights, f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False))
    state.update(_norm(weights, "encoder/layer_norm", "encoder.ln_post"))
    state["decoder.positional_embedding"] = weights["decoder/position_encodings/encodings"]
    state["decoder.token_embedding.weight"] = weights["decoder/embeddings/weight"]
    for i in range(dims["n_text_layer"]):
        state.update(_block(weights, f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True))
    state.update(_norm(weights, "decoder/layer_norm", "decoder.ln"))
    return state
