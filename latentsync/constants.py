"""Numbers the whole project agrees on. Import them from here; never spell them again.

See docs/pipeline-timing.md for why these values (the model's frame rate and the audio rate fix
how many Whisper frames belong to each video frame).
"""

MODEL_FPS = 25  # the frame rate the models were trained at; audio chunks and segments assume it
SAMPLE_RATE = 16000  # every audio path (Whisper, SyncNet mel, data pipeline) works on 16 kHz mono
INT16_SCALE = 32768.0  # 16-bit PCM samples <-> floats in [-1, 1)
DEFAULT_SEED = 1247  # the reference's inference and training seed
OUTPUT_CRF = 18  # x264 quality of every video the project writes (dubs and re-encoded clips); 0 lossless .. 51 worst
# file endings taken as video / audio wherever the project looks into a folder or stores an upload
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".wmv")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus")
