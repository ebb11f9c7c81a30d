"""Numbers the whole project agrees on. Import them from here; never spell them again.

See docs/pipeline-timing.md for why these values (the model's frame rate and the audio rate fix
how many Whisper frames belong to each video frame).
"""

MODEL_FPS = 25  # the frame rate the models were trained at; audio chunks and segments assume it
SAMPLE_RATE = 16000  # every audio path (Whisper, SyncNet mel, data pipeline) works on 16 kHz mono
DEFAULT_SEED = 1247  # the reference's inference and training seed
