"""Write the inpainting masks `latentsync/face/mask*.png` from their run-length tables.

Each table maps inclusive row ranges to inclusive column ranges of the region the model
generates (value 0); every other pixel is 255 (kept). Run: `python scripts/make_masks.py`.
"""

import sys
from pathlib import Path

import cv2
import numpy as np

from latentsync.cli_args import run_cli
from latentsync.io import atomic_output

SIZE = 256
OUT_DIR = Path(__file__).resolve().parents[1] / "latentsync" / "face"

# (first_row, last_row, [(first_col, last_col), ...]) of mask.png, all inclusive.
MAIN_UPPER = [(95, 127, [(9, 77), (178, 246)])]
MAIN_LOWER_TEXT = """
128-134:9-247 135:9-246 136-148:10-246 149:10-245 150-162:11-245 163:11-244 164-169:12-244
170:12-243 171:13-243 172:13-242 173:14-242 174:14-241 175:15-241 176:15-240 177:16-240
178:16-239 179:17-238 180:18-238 181:18-237 182-183:19-236 184:20-235 185-186:21-234
187:22-233 188:22-232 189:23-232 190:24-231 191:25-230 192:26-230 193:26-229 194:27-228
195:28-228 196:29-227 197:30-226 198:31-225 199:32-224 200:33-223 201:34-223 202:34-222
203:35-221 204:36-220 205:37-219 206:38-218 207:39-217 208:40-216 209:42-215 210:43-214
211:44-213 212:45-212 213:47-211 214:48-210 215:49-208 216:51-207 217:52-206 218:54-204
219:56-203 220:57-202 221:59-200 222:60-199 223:62-197 224:64-196 225:66-194 226:68-192
227:70-191 228:72-189 229:74-187 230:76-185 231:78-183 232:80-180 233:82-178 234:85-175
235:87-173 236:90-171 237:93-168 238:95-166 239:99-164 240:104-160 241:108-156 242:131-152
"""
MASK4_BAND = [(60, 127, [(9, 246)])]
# mask3.png: known rows of its mouth/chin region; rows in between are interpolated linearly
# (an approximation of the reference file, which no config uses; 12,668 px vs 12,651).
MASK3_KNOTS = [(128, 39, 217), (136, 39, 217), (137, 40, 216), (143, 40, 216), (144, 41, 215),
               (148, 41, 215), (172, 49, 207), (196, 70, 186), (204, 80, 176), (210, 93, 163),
               (214, 104, 152), (217, 120, 136)]


def parse_table(text: str) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Turn 'r0-r1:c0-c1' tokens into (r0, r1, [(c0, c1)]) runs."""
    runs = []
    for token in text.split():
        rows, cols = token.split(":")
        r0, _, r1 = rows.partition("-")
        c0, c1 = cols.split("-")
        runs.append((int(r0), int(r1 or r0), [(int(c0), int(c1))]))
    return runs


def interpolate_knots(knots) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """One run per row, with columns linearly interpolated between consecutive knots."""
    rows = np.arange(knots[0][0], knots[-1][0] + 1)
    left = np.rint(np.interp(rows, [k[0] for k in knots], [k[1] for k in knots])).astype(int)
    right = np.rint(np.interp(rows, [k[0] for k in knots], [k[2] for k in knots])).astype(int)
    return [(int(r), int(r), [(int(a), int(b))]) for r, a, b in zip(rows, left, right)]


def render(runs) -> np.ndarray:
    """A 256x256 RGB uint8 mask with 0 on the runs and 255 elsewhere."""
    mask = np.full((SIZE, SIZE), 255, np.uint8)
    for r0, r1, spans in runs:
        for c0, c1 in spans:
            mask[r0:r1 + 1, c0:c1 + 1] = 0
    return np.repeat(mask[:, :, None], 3, axis=2)


def all_masks() -> dict[str, np.ndarray]:
    """The four masks by file name."""
    lower = parse_table(MAIN_LOWER_TEXT)
    return {
        "mask.png": render(MAIN_UPPER + lower),
        "mask2.png": render(lower),
        "mask3.png": render(interpolate_knots(MASK3_KNOTS)),
        "mask4.png": render(MASK4_BAND + lower),
    }


def write_masks() -> None:
    for name, image in all_masks().items():
        path = OUT_DIR / name
        with atomic_output(path) as temp:
            if not cv2.imwrite(str(temp), image):
                raise OSError(f"{path}: could not write the PNG")
        print(f"{path}: {int((image[:, :, 0] == 0).sum())} generated pixels")


def main() -> int:
    return run_cli(write_masks)


if __name__ == "__main__":
    sys.exit(main())
