"""How long `inference.sh` takes to tell a user about a mistake (target: under 2 s each).

    python benchmarks/startup.py [--repeat 3]

Times two common mistakes, each in a fresh process: a missing UNet checkpoint and a missing input
video. Both must be reported (one line, exit code 2) before torch, diffusers and MediaPipe load.
Prints the median seconds per case; exits 1 if a case did not fail as expected.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO / "assets"
TARGET_S = 2.0


def cases(tmp: Path) -> dict[str, list[str]]:
    video, audio, out = MEDIA / "demo1_video.mp4", MEDIA / "demo1_audio.wav", tmp / "out.mp4"
    return {
        "missing checkpoint": ["--video_path", str(video), "--audio_path", str(audio), "--video_out_path", str(out),
                               "--inference_ckpt_path", str(tmp / "absent_unet.pt")],
        "missing input": ["--video_path", str(tmp / "absent.mp4"), "--audio_path", str(audio),
                          "--video_out_path", str(out)],
    }


def time_case(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run([str(REPO / "inference.sh"), *args], capture_output=True, text=True)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (the median is printed)")
    repeat = parser.parse_args().repeat
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in cases(Path(tmp)).items():
            runs = [time_case(args) for _ in range(max(repeat, 1))]
            seconds = statistics.median(t for t, _ in runs)
            result = runs[-1][1]
            message = result.stderr.strip()
            good = result.returncode == 2 and len(message.splitlines()) == 1
            ok &= good
            print(f"{name:20s} {seconds:6.2f} s  (target < {TARGET_S:g} s; exit {result.returncode}: {message})",
                  flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
