"""The data processing pipeline: raw talking-head videos -> training-ready clips (see docs/data-pipeline.md).

Stages (folder under OUT, module):
 1. valid                remove_broken   undecodable / no video / no audio / zero length out
 2. resampled            resample        25 fps, 16 kHz mono
 3. shots                detect_shots    PySceneDetect cuts
 4. segments             segment         5-10 s pieces
 5. single_face          check_faces     exactly one face of at least --min_face_size px
 6. aligned              align_faces     affine-aligned --resolution face videos with audio
 7. av_synced            sync_av         SyncNet v2 confidence and offset fixed to 0
 8. high_visual_quality  filter_quality  hyperIQA score

`run_pipeline(PipelineOptions(...))` runs them (see `runner` for resume, workers, Ray).
"""

from latentsync.data.preprocess.common import PipelineOptions, StageResult
from latentsync.data.preprocess.runner import (STAGES, Stage, StageSummary, discover_inputs,
                                               format_summary, run_pipeline, shard)

__all__ = ["PipelineOptions", "STAGES", "Stage", "StageResult", "StageSummary",
           "discover_inputs", "format_summary", "run_pipeline", "shard"]
