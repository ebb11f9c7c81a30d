"""WORK/report/: learnability.md (table, targets, steps), losses.png, clips.png, summary.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from benchmarks.learnability_parts.dubbing import VARIANTS
from latentsync.io import atomic_write_text

LABELS = {"dub": "dub (model, new speech)", "input": "control: input video unchanged",
          "zero_audio": "control: model, zeroed audio", "other_audio": "control: model, third sentence's audio",
          "truth": "truth rendering of the new sentence"}
METRICS = (("mouth_correlation", "mouth-opening corr."), ("lse_c", "LSE-C"), ("lse_d", "LSE-D"),
           ("offset", "AV offset"), ("mouth_ssim", "mouth SSIM"), ("mouth_psnr", "mouth PSNR dB"),
           ("open_ratio", "open ratio"), ("texture_ratio", "texture ratio"), ("leak_correlation", "leak corr."))
# the mouth metrics users feel (latentsync/eval/mouth.py), in summary.json for the dub and every control
MOUTH_METRICS = ("open_ratio", "texture_ratio", "leak_correlation")
# the full run's targets and the --quick run's (docs/benchmarks/learnability.md; tests/test_learnability.py imports these)
FULL_TARGETS = dict(syncnet_heldout_accuracy=0.90, dub_mouth_correlation=0.7, control_max_correlation=0.2,
                    lse_c_ratio=0.8, minutes=60.0)
QUICK_TARGETS = dict(syncnet_heldout_accuracy=0.75, correlation_margin=0.3, minutes=8.0)


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def variant_means(clips: list[dict]) -> dict:
    """{variant: {metric: mean over clips}}."""
    return {v: {m: _mean(c[v].get(m) for c in clips) for m, _ in METRICS} for v in VARIANTS}  # .get: older caches


def summarise(plan_name: str, accuracy: dict, clips: list[dict], seconds: float, peak_kb: int,
              extra: dict) -> dict:
    means = variant_means(clips)
    summary = dict(
        mode=plan_name, syncnet_heldout_accuracy=accuracy["accuracy"],
        syncnet_in_sync_accuracy=accuracy["in_sync_accuracy"], syncnet_shifted_accuracy=accuracy["shifted_accuracy"],
        dub_mouth_correlation=means["dub"]["mouth_correlation"],
        zero_audio_mouth_correlation=means["zero_audio"]["mouth_correlation"],
        other_audio_mouth_correlation=means["other_audio"]["mouth_correlation"],
        input_mouth_correlation=means["input"]["mouth_correlation"],
        truth_mouth_correlation=means["truth"]["mouth_correlation"],
        dub_lse_c=means["dub"]["lse_c"], dub_lse_d=means["dub"]["lse_d"], dub_offset=means["dub"]["offset"],
        truth_lse_c=means["truth"]["lse_c"], truth_lse_d=means["truth"]["lse_d"],
        dub_mouth_ssim=means["dub"]["mouth_ssim"], dub_mouth_psnr=means["dub"]["mouth_psnr"],
        minutes=round(seconds / 60, 2), peak_rss_gb=round(peak_kb / 2 ** 20, 3), num_dubs=len(clips),
        **{f"{v}_{m}": means[v][m] for v in VARIANTS for m in MOUTH_METRICS}, variants=means, **extra)
    summary["targets"] = check_targets(summary)
    return summary


def check_targets(s: dict) -> dict:
    """Each target of the mode, named "<measure> <op> <bound>": the measured value, the bound and
    whether it holds."""
    if s["mode"] == "quick":
        t = QUICK_TARGETS
        rows = [("syncnet_heldout_accuracy", s["syncnet_heldout_accuracy"], t["syncnet_heldout_accuracy"], ">="),
                ("dub correlation - zero-audio correlation",
                 s["dub_mouth_correlation"] - s["zero_audio_mouth_correlation"], t["correlation_margin"], ">="),
                ("minutes", s["minutes"], t["minutes"], "<=")]
    else:
        t = FULL_TARGETS
        controls = max(s["zero_audio_mouth_correlation"], s["other_audio_mouth_correlation"],
                       s["input_mouth_correlation"])
        ratio = s["dub_lse_c"] / s["truth_lse_c"] if s["truth_lse_c"] else float("nan")
        rows = [("syncnet_heldout_accuracy", s["syncnet_heldout_accuracy"], t["syncnet_heldout_accuracy"], ">="),
                ("dub_mouth_correlation", s["dub_mouth_correlation"], t["dub_mouth_correlation"], ">="),
                ("every control's correlation", controls, t["control_max_correlation"], "<="),
                ("dub LSE-C / truth LSE-C", ratio, t["lse_c_ratio"], ">="),
                ("minutes", s["minutes"], t["minutes"], "<=")]
    out = {}
    for measure, value, bound, op in rows:
        ok = bool(np.isfinite(value) and (value >= bound if op == ">=" else value <= bound))
        out[f"{measure} {op} {bound:g}"] = dict(value=round(float(value), 4), bound=bound, met=ok)
    return out


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(summary: dict, clips: list[dict], steps: dict, command: str, commit: str) -> str:
    means = summary["variants"]
    lines = [f"# Learnability benchmark ({summary['mode']} run)", "",
             f"Command: `{command}`  ", f"Commit: `{commit}`  ",
             f"Whisper: {summary.get('whisper')}  ",
             f"Total time: {summary['minutes']:.1f} min wall, {summary.get('cpu_minutes', float('nan')):.1f} "
             f"min CPU; peak memory (RSS): {summary['peak_rss_gb']:.2f} GB", "",
             f"Held-out SyncNet accuracy (balanced): **{summary['syncnet_heldout_accuracy']:.3f}** "
             f"(in sync {summary['syncnet_in_sync_accuracy']:.3f}, "
             f"shifted {summary['syncnet_shifted_accuracy']:.3f})", "",
             f"Dubs of {len(clips)} held-out clips, each scored against the new sentence (means over clips):", "",
             "| video | " + " | ".join(label for _, label in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for v in VARIANTS:
        lines.append(f"| {LABELS[v]} | " + " | ".join(_fmt(means[v][m]) for m, _ in METRICS) + " |")
    lines += ["", "Targets:", "", "| target | measured | met |", "|---|---|---|"]
    for name, t in summary["targets"].items():
        lines.append(f"| {name} | {t['value']:.3f} | {'yes' if t['met'] else 'NO'} |")
    lines += ["", "Steps (wall seconds; CPU seconds of the step's own work and child processes, which do not "
                  "depend on how busy the machine was; steps of one group with different chains ran side by side, "
                  "and the total counts such a group as its longest chain):", "",
              "| step | group/chain | wall s | CPU s | peak RSS GB so far |", "|---|---|---|---|---|"]
    for name, entry in steps.items():
        lines.append(f"| {name} | {entry.get('chain', '-')} | {entry['seconds']:.0f} | "
                     f"{entry.get('cpu_seconds', float('nan')):.0f} | {entry['peak_rss_kb'] / 2 ** 20:.2f} |")
    lines += ["", "Per clip (mouth-opening correlation, dub / zero audio / third audio / input / truth):", ""]
    for c in clips:
        lines.append(f"- {c['clip']} dubbed with {c['new_sentence']}: " +
                     " / ".join(_fmt(c[v]["mouth_correlation"]) for v in
                                ("dub", "zero_audio", "other_audio", "input", "truth")))
    lines += ["", "Charts: losses.png (training curves), clips.png (per-clip scores), "
                  "opening.png (measured mouth opening against the truth track, first clip)."]
    return "\n".join(lines) + "\n"


def loss_chart(histories: dict, path: Path) -> None:
    """One panel per trainer: its training loss (and validation points)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * max(len(histories), 1), 3.2))
    for i, (name, history) in enumerate(histories.items()):
        ax = fig.add_subplot(1, max(len(histories), 1), i + 1)
        for phase, style in (("train", "-"), ("val", "o-")):
            steps, values = history.get(f"{phase}_step_list", []), history.get(f"{phase}_loss_list", [])
            if values:
                ax.plot(steps[-len(values):], values, style, label=f"{phase} loss", markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def clip_chart(clips: list[dict], path: Path) -> None:
    """Per-clip mouth-opening correlation and LSE-C of every variant."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4))
    x = np.arange(len(clips))
    for k, (metric, title) in enumerate((("mouth_correlation", "mouth-opening correlation"), ("lse_c", "LSE-C"))):
        ax = fig.add_subplot(1, 2, k + 1)
        width = 0.8 / len(VARIANTS)
        for j, v in enumerate(VARIANTS):
            ax.bar(x + j * width, [c[v][metric] for c in clips], width, label=v)
        ax.set_xticks(x + 0.4 - width / 2, [c["clip"][-5:] for c in clips], fontsize=7)
        ax.set_title(title)
        ax.axhline(0, color="k", linewidth=0.5)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def opening_chart(clip: dict, path: Path) -> None:
    """Measured mouth opening of the dub, the zero-audio control and the truth against the track."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3))
    ax = fig.add_subplot(1, 1, 1)
    track = np.array(clip["truth_track"])
    ax.plot(track / max(track.max(), 1e-6), "k-", label="truth track (scaled)")
    for v in ("dub", "zero_audio", "truth"):
        values = np.array([np.nan if x is None else x for x in clip[v]["opening"]], float)
        ax.plot(values / max(np.nanmax(values), 1e-6), label=f"{v} (measured, scaled)")
    ax.set_xlabel("frame")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def write_report(folder: Path, summary: dict, clips: list[dict], steps: dict, histories: dict,
                 command: str, commit: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    loss_chart(histories, folder / "losses.png")
    clip_chart(clips, folder / "clips.png")
    opening_chart(clips[0], folder / "opening.png")
    for name, text in (("learnability.md", markdown(summary, clips, steps, command, commit)),
                       ("summary.json", json.dumps(summary, indent=1))):
        atomic_write_text(folder / name, text)
    return folder / "learnability.md"
