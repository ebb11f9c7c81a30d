"""Data pipeline speed: seconds per input minute of each stage, re-encoding everything vs copying.

    python -m benchmarks.data_pipeline [--videos A.mp4 B.mp4 ...] [--no_write]

Runs the data pipeline (scripts/data_processing_pipeline.py's `run_pipeline`, one worker) twice
on the same clips (default: assets/demo1_video.mp4 and demo2_video.mp4) into temporary folders:
once with `--reencode always` (the earlier path: every clip and cut re-encoded) and once with
`--reencode auto` (streams copied where they conform, cuts on key frames by stream copy; see
docs/data-pipeline.md). Stages 7 and 8 are skipped when their downloaded networks are missing
(checkpoints/auxiliary/), as in the learnability benchmark. Prints a table and writes
docs/benchmarks/data_pipeline.md and .json (unless --no_write). Timings are wall clock on
whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe / TFLite chatter
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from latentsync.data.preprocess import PipelineOptions, run_pipeline  # noqa: E402
from latentsync.data.preprocess.runner import LEDGER_DIR, STAGE_BY_NUMBER  # noqa: E402
from latentsync.io import atomic_write_text  # noqa: E402
from latentsync.video import probe_video  # noqa: E402

DEFAULT_VIDEOS = (REPO / "assets" / "demo1_video.mp4", REPO / "assets" / "demo2_video.mp4")
MODES = ("always", "auto")  # old path first, then the new one
OUT_DIR = REPO / "docs" / "benchmarks"
COUNTED_STAGES = (2, 3, 4)  # stages whose ledger detail / outputs say what was copied
# The demo faces measure 205-300 px, right at the default 256 px of stage 5, where encoding
# differences flip single pieces in or out; 128 keeps every piece so that both runs give stage 6
# the same work.
MIN_FACE_SIZE = 128


def offline_skips(options: PipelineOptions) -> tuple[int, ...]:
    """Stages 7 and 8 need downloaded networks; skip the ones whose file is missing."""
    missing = [(7, options.syncnet_path), (8, options.hyper_iqa_path)]
    return tuple(number for number, path in missing if not path.is_file())


def run_mode(mode: str, videos: list[Path], work: Path) -> dict:
    """One pipeline run with `--reencode mode`: seconds per stage and what it produced."""
    raw = work / f"raw_{mode}"
    raw.mkdir(parents=True)
    for index, video in enumerate(videos):
        target = raw / f"{index:02d}_{video.name}"
        try:
            os.link(video, target)
        except OSError:
            target.write_bytes(video.read_bytes())
    out = work / f"out_{mode}"
    options = PipelineOptions(input_dir=str(raw), output_dir=str(out), reencode=mode,
                              min_face_size=MIN_FACE_SIZE, progress=False)
    options.skip_stages = offline_skips(options)
    summaries = run_pipeline(options)
    stages = {s.number: dict(folder=s.folder, seconds=s.seconds, inputs=s.inputs,
                             outputs=s.outputs, skipped=s.skipped) for s in summaries}
    for number in COUNTED_STAGES:
        stages[number]["details"] = ledger_details(out, STAGE_BY_NUMBER[number].folder)
    return dict(skip_stages=list(options.skip_stages), stages=stages,
                clips=sorted(p.name for p in (out / "high_visual_quality").rglob("*.mp4")))


def ledger_details(out: Path, folder: str) -> list[str]:
    """The `detail` of every kept input of one stage (e.g. "video copied, audio re-encoded")."""
    details = []
    for path in sorted((out / LEDGER_DIR / folder).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["status"] == "kept":
                details.append(f"{entry['input']}: {entry['detail'] or 'cut or linked'}")
    return sorted(details)


def git_commit() -> str:
    """`git rev-parse --short HEAD`, plus " + work tree" when there are uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + work tree" if dirty else "")


def per_minute(runs: dict, minutes: float) -> list[dict]:
    """Rows: stage, seconds per input minute of each mode, and always / auto."""
    rows = []
    for number in sorted(runs["auto"]["stages"]):
        old, new = (runs[m]["stages"][number] for m in MODES)
        row = dict(stage=f"{number} {new['folder']}" + (" (skipped)" if new["skipped"] else ""),
                   always=old["seconds"] / minutes, auto=new["seconds"] / minutes)
        row["ratio"] = None if new["skipped"] or not row["auto"] else row["always"] / row["auto"]
        rows.append(row)
    total = dict(stage="total", always=sum(r["always"] for r in rows),
                 auto=sum(r["auto"] for r in rows))
    total["ratio"] = total["always"] / total["auto"]
    return rows + [total]


def table(rows: list[dict]) -> str:
    lines = ["| stage | always: s per input min | auto: s per input min | always / auto |",
             "|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.1f}x"
        lines.append(f"| {r['stage']} | {r['always']:.1f} | {r['auto']:.1f} | {ratio} |")
    return "\n".join(lines)


def details_markdown(runs: dict) -> str:
    lines = []
    for mode in MODES:
        for number in COUNTED_STAGES:
            stage = runs[mode]["stages"][number]
            lines.append(f"- {mode}, stage {number} {stage['folder']} ({stage['outputs']} "
                         f"outputs): " + "; ".join(stage["details"]))
    return "\n".join(lines)


def write_reports(report: dict) -> None:
    md = f"""# Data pipeline: seconds per input minute, re-encoding vs stream copy

Command: `{report['command']}` at commit {report['commit']}, {report['date']}; {report['cores']}-core
CPU shared with other jobs (timings are noisy). Inputs: {', '.join(report['videos'])}
({report['input_minutes'] * 60:.1f} s in all), one worker, `min_face_size` {MIN_FACE_SIZE}. Stages
skipped (networks not downloaded): {report['skip_stages'] or 'none'}.

`always` is `--reencode always` (every clip and cut re-encoded, the earlier behaviour); `auto` is
the default: conforming video streams copied, cuts on key frames by stream copy
(docs/data-pipeline.md, "Stream copy or re-encode").

{table(report['rows'])}

What the stages did (ledger details):

{details_markdown(report['runs'])}

Stage 2 copies a conforming video stream, so its cost no longer grows with resolution. Stage 4
can copy only the pieces that start on a key frame of its input; a copied source keeps its own
key frames (the demo clips: one every 10 s), while stage 4 must start a piece every 5 s within
the 5-to-under-10 s limits (a 250-frame clip has no choice but 125 + 125), so most demo pieces
are still re-encoded: each frame is encoded once instead of twice. A clip that stage 2 has to
re-encode gets a key frame every 125 frames and all its pieces are then copied.

Final clips: always {len(report['runs']['always']['clips'])}, auto {len(report['runs']['auto']['clips'])}.
"""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in (("data_pipeline.md", md),
                       ("data_pipeline.json", json.dumps(report, indent=1) + "\n")):
        atomic_write_text(OUT_DIR / name, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", nargs="+", type=Path, default=list(DEFAULT_VIDEOS),
                        help="clips to run (default: the two demo clips)")
    parser.add_argument("--no_write", action="store_true", help="print only; leave docs/benchmarks alone")
    args = parser.parse_args(argv)
    for video in args.videos:
        if not video.is_file():
            print(f"error: --videos {video}: file not found", file=sys.stderr)
            return 2
    command = "python -m benchmarks.data_pipeline " + " ".join(argv if argv is not None else sys.argv[1:])
    minutes = sum(probe_video(v).duration for v in args.videos) / 60
    with tempfile.TemporaryDirectory(prefix="data-pipeline-") as work:
        runs = {}
        for mode in MODES:
            runs[mode] = run_mode(mode, args.videos, Path(work))
            print(f"{mode}: " + ", ".join(f"{n} {s['seconds']:.1f} s"
                                           for n, s in runs[mode]["stages"].items()), flush=True)
    rows = per_minute(runs, minutes)
    report = dict(command=command.strip(), commit=git_commit(), cores=os.cpu_count(),
                  date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  videos=[os.path.relpath(v, REPO) for v in args.videos], input_minutes=minutes,
                  skip_stages=runs["auto"]["skip_stages"], rows=rows, runs=runs)
    print(table(rows))
    if not args.no_write:
        write_reports(report)
        print(f"wrote {OUT_DIR / 'data_pipeline.md'} and {OUT_DIR / 'data_pipeline.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
