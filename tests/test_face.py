"""Face stage: masks, detection, tracking of one person, alignment and paste-back."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from latentsync.errors import UserError
from latentsync.face.alignment import AlignRestore, similarity_transform, soft_edge
from latentsync.face.detectors import Face, make_face_detector
from latentsync.face.mask import DEFAULT_MASK_PATH, MASK_DIR, load_mask
from latentsync.face.tracking import FaceTracker

from conftest import MEDIA, REPO, need

DEMO1 = MEDIA / "demo1_video.mp4"

MOUTH = [13, 14, 61, 291]  # FaceMesh: inner lips top/bottom, mouth corners
EYES = [33, 133, 362, 263]  # FaceMesh: eye corners


@pytest.fixture(scope="module")
def frame0() -> np.ndarray:
    need(DEMO1)
    import av

    with av.open(str(DEMO1)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


@pytest.fixture(scope="module")
def detector():
    det = make_face_detector("mediapipe")
    yield det
    det.close()


@pytest.fixture(scope="module")
def face0(frame0, detector) -> Face:
    faces = detector.detect(frame0)
    assert len(faces) == 1
    return faces[0]


# ---------------------------------------------------------------------------- masks

def zero_runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive column runs where `row` is 0."""
    cols = np.flatnonzero(row == 0)
    if cols.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(cols) > 1)
    starts = np.concatenate([[cols[0]], cols[breaks + 1]])
    ends = np.concatenate([cols[breaks], [cols[-1]]])
    return list(zip(starts.tolist(), ends.tolist()))


def test_mask_png_matches_appendix_a():
    image = cv2.imread(str(DEFAULT_MASK_PATH), cv2.IMREAD_UNCHANGED)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert set(np.unique(image).tolist()) == {0, 255}
    assert (image[:, :, 0] == image[:, :, 1]).all() and (image[:, :, 1] == image[:, :, 2]).all()
    mask = image[:, :, 0]
    assert int((mask == 0).sum()) == 26673
    rows = np.flatnonzero((mask == 0).any(axis=1))
    assert rows.min() == 95 and rows.max() == 242
    expected = {95: [(9, 77), (178, 246)], 127: [(9, 77), (178, 246)], 128: [(9, 247)],
                134: [(9, 247)], 135: [(9, 246)], 148: [(10, 246)], 182: [(19, 236)],
                209: [(42, 215)], 241: [(108, 156)], 242: [(131, 152)]}
    for row, runs in expected.items():
        assert zero_runs(mask[row]) == runs, row


def test_other_masks_and_generator_agree_with_files():
    spec = importlib.util.spec_from_file_location("make_masks", REPO / "scripts" / "make_masks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = module.all_masks()
    counts = {"mask.png": 26673, "mask2.png": 22119, "mask4.png": 38303}
    for name, image in generated.items():
        on_disk = cv2.imread(str(MASK_DIR / name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(on_disk, image), f"{name} is stale; run scripts/make_masks.py"
        if name in counts:
            assert int((image[:, :, 0] == 0).sum()) == counts[name], name
    mask, mask2 = generated["mask.png"][:, :, 0], generated["mask2.png"][:, :, 0]
    assert np.array_equal(mask2[128:], mask[128:]) and (mask2[:128] == 255).all()
    mask3 = generated["mask3.png"][:, :, 0]
    assert abs(int((mask3 == 0).sum()) - 12651) < 300
    assert zero_runs(mask3[128]) == [(39, 217)] and zero_runs(mask3[217]) == [(120, 136)]


def test_load_mask_resolutions(tmp_path):
    m256 = load_mask(DEFAULT_MASK_PATH, 256)
    assert m256.shape == (256, 256) and m256.dtype == np.float32
    assert set(np.unique(m256).tolist()) == {0.0, 1.0}
    assert m256[100, 40] == 0 and m256[100, 128] == 1 and m256[50, 128] == 1
    m512 = load_mask(DEFAULT_MASK_PATH, 512)
    assert m512.shape == (512, 512) and 0 <= m512.min() and m512.max() <= 1
    assert abs(m512.mean() - m256.mean()) < 0.01
    soft = np.count_nonzero((m512 > 0.01) & (m512 < 0.99))
    assert soft > 0  # Lanczos gives soft edges at 512
    with pytest.raises(UserError, match="nothing.png"):
        load_mask(tmp_path / "nothing.png", 256)


# ---------------------------------------------------------------------------- detection

def test_mediapipe_finds_one_face_with_ordered_points(face0, frame0):
    left, right, nose = face0.points
    assert face0.points.shape == (3, 2)
    assert left[0] < right[0]
    assert nose[1] > left[1] and nose[1] > right[1]
    assert left[0] < nose[0] < right[0]
    x1, y1, x2, y2 = face0.box
    assert 0 <= x1 < x2 <= frame0.shape[1] and 0 <= y1 < y2 <= frame0.shape[0]
    assert x1 <= nose[0] <= x2 and y1 <= nose[1] <= y2
    assert face0.landmarks.shape == (468, 2)


def test_black_frame_gives_no_face(detector):
    black = np.zeros((360, 640, 3), np.uint8)
    assert detector.detect(black) == []
    assert FaceTracker(detector).track(black) is None


@pytest.mark.parametrize("name", ["insightface", "face_alignment"])
def test_missing_optional_backend_is_a_user_error(tmp_path, name):
    with pytest.raises(UserError, match="checkpoints/auxiliary"):
        make_face_detector(name, checkpoints_dir=tmp_path / "checkpoints")


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="dlib"):
        make_face_detector("dlib")


# ---------------------------------------------------------------------------- tracking

def two_faces(frame0, left_scale, right_scale, size=320):
    """Two copies of demo1's face side by side, each shrunk by its scale on a dark tile."""
    crop = frame0[430:1030, 295:895]
    tiles = []
    for scale in (left_scale, right_scale):
        side = int(size * scale)
        tile = np.full((size, size, 3), 40, np.uint8)
        offset = (size - side) // 2
        tile[offset:offset + side, offset:offset + side] = cv2.resize(
            crop, (side, side), interpolation=cv2.INTER_AREA)
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)


def test_two_faces_detected(frame0, detector):
    faces = detector.detect(two_faces(frame0, 1.0, 1.0))
    assert len(faces) == 2
    centres = sorted(f.center[0] for f in faces)
    assert centres[0] < 320 < centres[1]


def test_tracker_picks_largest_then_follows_same_person(frame0, detector):
    tracker = FaceTracker(detector)
    first = tracker.track(two_faces(frame0, 0.75, 1.0))
    assert first is not None and first.center[0] > 320  # the larger, right copy
    # Sizes swap slightly: the left face is now larger, but the tracker stays on the right one.
    second = tracker.track(two_faces(frame0, 0.9, 0.85))
    assert second is not None and second.center[0] > 320
    tracker.reset()
    fresh = tracker.track(two_faces(frame0, 0.9, 0.85))
    assert fresh.center[0] < 320  # a new clip chooses by size again


def test_tracker_face_index_and_face_box(frame0, detector):
    frame = two_faces(frame0, 1.0, 0.8)
    assert FaceTracker(detector, face_index=1).track(frame).center[0] > 320
    assert FaceTracker(detector, face_index=0).track(frame).center[0] < 320
    assert FaceTracker(detector, face_index=2).track(frame) is None
    assert FaceTracker(detector, face_box=(400, 0, 640, 320)).track(frame).center[0] > 320
    assert FaceTracker(detector).track(frame).center[0] < 320


def test_tracker_survives_faceless_frames(frame0, detector):
    tracker = FaceTracker(detector, face_index=1)
    assert tracker.track(two_faces(frame0, 1.0, 1.0)).center[0] > 320
    assert tracker.track(np.zeros((320, 640, 3), np.uint8)) is None
    assert tracker.track(two_faces(frame0, 1.0, 1.0)).center[0] > 320


# ---------------------------------------------------------------------------- alignment

def test_template_and_crop_sizes():
    a256, a512 = AlignRestore(256), AlignRestore(512)
    assert a256.crop_size == (210, 280) and a512.crop_size == (420, 560)
    np.testing.assert_allclose(a256.template, [[47.6, 56], [162.4, 56], [105, 112]], atol=1e-9)
    np.testing.assert_allclose(a512.template, 2 * a256.template, atol=1e-9)


def test_estimate_maps_points_onto_template():
    align = AlignRestore(256)
    identity = align.estimate(align.template)
    np.testing.assert_allclose(identity, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    angle = np.deg2rad(12.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = 3.7 * align.template @ rotation.T + (400.0, 900.0)
    plain, bias = similarity_transform(points, align.template)
    mapped = points @ plain[:, :2].T + plain[:, 2]
    np.testing.assert_allclose(mapped, align.template, atol=1e-6)
    np.testing.assert_allclose(plain[:, :2], rotation.T / 3.7, atol=1e-9)
    align.reset()
    matrix = align.estimate(points)  # the reference's nose bias is added to the translation
    assert matrix.dtype == np.float64
    np.testing.assert_allclose(matrix[:, :2], plain[:, :2], atol=1e-12)
    np.testing.assert_allclose(matrix[:, 2], plain[:, 2] + bias, atol=1e-9)
    # Rotating about the centroid keeps the normalised shape, so the nose bias is
    # qn - R qn, with qn the template nose in units of the sample std (ddof=1) of the template.
    centred = align.template - align.template.mean(axis=0)
    nose = centred[2] / np.sqrt((centred ** 2).sum() / 5)
    np.testing.assert_allclose(bias, nose - rotation @ nose, atol=1e-9)
    mirrored = align.template * (-1, 1)
    assert np.linalg.det(align.estimate(mirrored)[:, :2]) > 0  # no reflection


def test_nose_bias_smoothing_and_reset():
    points_a = np.array([[100.0, 100.0], [200.0, 102.0], [150.0, 170.0]])
    points_b = np.array([[100.0, 100.0], [200.0, 102.0], [158.0, 160.0]])
    fresh = AlignRestore(256)
    plain_a, bias_a = similarity_transform(points_a, fresh.template)
    plain_b, bias_b = similarity_transform(points_b, fresh.template)
    np.testing.assert_allclose(fresh.estimate(points_a)[:, 2] - plain_a[:, 2], bias_a)
    smoothed = fresh.estimate(points_b)[:, 2] - plain_b[:, 2]
    np.testing.assert_allclose(smoothed, 0.2 * bias_a + 0.8 * bias_b, atol=1e-9)
    assert np.abs(bias_a - bias_b).max() > 0.05
    fresh.reset()
    np.testing.assert_allclose(fresh.estimate(points_b), AlignRestore(256).estimate(points_b))


@pytest.mark.parametrize("resolution", [256, 512])
def test_alignment_puts_mouth_in_generated_region(frame0, face0, resolution):
    align = AlignRestore(resolution)
    face, matrix = align.align(frame0, face0.points)
    assert face.shape == (resolution, resolution, 3) and face.dtype == np.uint8
    crop_w, crop_h = align.crop_size
    scale = (resolution / crop_w, resolution / crop_h)

    def to_square(indices):
        return (face0.landmarks[indices] @ matrix[:, :2].T + matrix[:, 2]) * scale

    mask = load_mask(DEFAULT_MASK_PATH, resolution)
    for x, y in to_square(MOUTH):
        assert mask[int(round(y)), int(round(x))] < 0.5, (x, y)
    eyes = to_square(EYES)
    assert (eyes[:, 1] < 95 * resolution / 256).all()
    assert (eyes[:, 0] > 0).all() and (eyes[:, 0] < resolution).all()


# ---------------------------------------------------------------------------- restore

def crop_coordinates(matrix, shape):
    """Crop-space coordinates of every frame pixel, [H, W, 2]."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    return np.stack([xs, ys], axis=-1) @ matrix[:, :2].T + matrix[:, 2]


def test_restore_round_trip(frame0, face0):
    align = AlignRestore(256)
    face, matrix = align.align(frame0, face0.points)
    out = align.restore(frame0, face, matrix)
    assert out.shape == frame0.shape and out.dtype == np.uint8
    coords = crop_coordinates(matrix, frame0.shape)
    crop_w, crop_h = align.crop_size
    outside = ((coords[..., 0] < -3) | (coords[..., 0] > crop_w + 2)
               | (coords[..., 1] < -3) | (coords[..., 1] > crop_h + 2))
    assert np.array_equal(out[outside], frame0[outside])
    x1, y1, x2, y2 = face0.box.astype(int)
    diff = np.abs(out[y1:y2, x1:x2].astype(int) - frame0[y1:y2, x1:x2])
    assert diff.mean() < 6


def test_restore_constant_face_changes_only_crop_region(frame0, face0):
    align = AlignRestore(256)
    _, matrix = align.align(frame0, face0.points)
    green = np.zeros((256, 256, 3), np.uint8)
    green[..., 1] = 255
    out = align.restore(frame0, green, matrix)
    changed = (out != frame0).any(axis=2)
    coords = crop_coordinates(matrix, frame0.shape)[changed]
    crop_w, crop_h = align.crop_size
    assert coords[:, 0].min() > -3 and coords[:, 0].max() < crop_w + 2
    assert coords[:, 1].min() > -3 and coords[:, 1].max() < crop_h + 2
    nose_x, nose_y = face0.points[2].astype(int)
    assert tuple(out[nose_y, nose_x]) == (0, 255, 0)
    assert changed.sum() > 0.8 * crop_w * crop_h / np.linalg.det(matrix[:, :2])
    as_float = align.restore(frame0, green.astype(np.float32) / 127.5 - 1, matrix)
    assert np.abs(as_float.astype(int) - out).max() <= 1


def test_restore_window_equals_full_frame_blend(frame0, face0):
    """Restoring inside the crop's bounding box matches a full-frame blend.

    Not bit-exact: OpenCV's fixed-point warp rounds sampling positions differently when the
    translation changes, so a few pixels may differ by one grey level.
    """
    align = AlignRestore(256)
    face, matrix = align.align(frame0, face0.points)
    out = align.restore(frame0, face, matrix)
    height, width = frame0.shape[:2]
    inverse = cv2.invertAffineTransform(matrix)
    crop = cv2.resize(face.astype(np.float32), align.crop_size, interpolation=cv2.INTER_CUBIC)
    warped = np.clip(cv2.warpAffine(crop, inverse, (width, height), flags=cv2.INTER_LINEAR,
                                    borderValue=(127, 127, 127)), 0, 255)
    valid = cv2.warpAffine(np.ones(align.crop_size[::-1], np.float32), inverse, (width, height))
    valid = cv2.erode(valid, np.ones((2, 2), np.uint8), anchor=(1, 1))
    soft = soft_edge(valid)[..., None]
    full = soft * (valid[..., None] * warped) + (1 - soft) * frame0.astype(np.float32)
    diff = np.abs(out.astype(int) - np.clip(np.rint(full), 0, 255).astype(np.uint8))
    assert diff.max() <= 1 and np.count_nonzero(diff) < 1000


def test_resolve_mask_default_package_relative_and_missing(tmp_path, monkeypatch):
    from latentsync.face.mask import resolve_mask

    monkeypatch.chdir(tmp_path)  # the configs' "latentsync/face/mask.png" works from any folder
    assert resolve_mask(None) == DEFAULT_MASK_PATH and resolve_mask("") == DEFAULT_MASK_PATH
    assert resolve_mask("latentsync/face/mask2.png").resolve() == MASK_DIR / "mask2.png"
    own = tmp_path / "my_mask.png"
    cv2.imwrite(str(own), np.full((256, 256, 3), 255, np.uint8))
    assert resolve_mask("my_mask.png") == Path("my_mask.png")
    with pytest.raises(UserError, match=r"^stage2\.yaml: data\.mask_image_path: nothere\.png: not found$"):
        resolve_mask("nothere.png", "stage2.yaml")


def test_one_box_iou_for_tracking_and_evaluation():
    from latentsync.eval import syncnet_v2
    from latentsync.face.tracking import box_iou

    assert syncnet_v2.box_iou is box_iou
    a, b = np.array([0, 0, 10, 10.0]), np.array([5, 0, 15, 10.0])
    assert box_iou(a, b) == pytest.approx(50 / 150) and box_iou(a, a) == 1.0
    assert box_iou(a, np.array([20, 20, 30, 30.0])) == 0.0
