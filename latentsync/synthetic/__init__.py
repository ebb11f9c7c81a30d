"""Known-truth synthetic talking faces: speech (espeak-ng) drives a mouth track that drives the
lips of real face photos, so the right mouth for every frame is known.

speech.py     espeak-ng via ctypes: 16 kHz speech and phoneme timings
visemes.py    phonemes -> mouth track (open, width) per video frame
identities.py face photos (assets/synthetic_faces/) and their face mesh
motion.py     head motion and lighting per frame
render.py     render_clip(identity, head_motion, mouth_track) -> frames
measure.py    mouth opening measured on frames with MediaPipe
corpus.py     the corpus writer behind scripts/make_synthetic_corpus.py
"""
