"""Stage 8: keep clips whose hyperIQA score (mean of the first, middle and last frame, centre
crop 224, docs/evaluation.md) is at least `quality_threshold` (40). Survivors are linked into
`high_visual_quality`, the folder training reads."""

from __future__ import annotations

from pathlib import Path

from latentsync.data.preprocess.common import (PipelineOptions, StageResult, hyper_iqa,
                                               link_or_copy, torch_device)
from latentsync.errors import UserError

FOLDER = "high_visual_quality"


def filter_quality(input_path: Path, output_dir: Path, options: PipelineOptions) -> StageResult:
    """Link the clip into `output_dir` if its visual quality is high enough."""
    from latentsync.eval.hyper_iqa import video_quality

    try:
        score = video_quality(hyper_iqa(options), input_path, torch_device(options))
    except UserError as exc:
        return StageResult.drop("unreadable", str(exc))
    if not score >= options.quality_threshold:  # NaN fails too
        return StageResult.drop("low_quality",
                                f"hyperIQA score {score:.2f} < {options.quality_threshold:g}")
    return StageResult.keep(link_or_copy(input_path, output_dir / input_path.name),
                            detail=f"hyperIQA score {score:.2f}")
