"""Optional face backends (InsightFace, face_alignment) driven through small fake packages.

Neither package nor its weights are available offline, so each test installs a fake module
into `sys.modules` that records what the backend passes in and returns landmarks chosen by the
test. Expected points are computed here from docs/face-processing.md, independently of the backend code.
"""

import enum
import importlib.machinery
import importlib.util
import sys
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from latentsync.errors import UserError
from latentsync.face.detectors import make_face_detector
from latentsync.face.tracking import FaceTracker

# The point groups of docs/face-processing.md, written out again so that a wrong constant in the backend is caught.
INSIGHTFACE_GROUPS = ([43, 48, 49, 51, 50], [101, 102, 103, 104, 105], [74, 77, 83, 86])
FAN_GROUPS = (list(range(17, 22)), list(range(22, 27)), list(range(27, 36)))
BUFFALO_FILES = ("det_10g.onnx", "2d106det.onnx")
FAN_FILES = ("s3fd-619a316812.pth", "2DFAN4-cd938726ad.zip")

HEIGHT, WIDTH = 48, 64  # the fakes ignore pixel content, so frames stay tiny


def install_module(monkeypatch, name: str, **attributes) -> types.ModuleType:
    """Put a fake module with a real spec (importlib.util.find_spec needs one) in sys.modules."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def rgb_frame(seed: int = 0) -> np.ndarray:
    """uint8 RGB frame whose three channels differ everywhere."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 80, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    frame[..., 1] += 90
    frame[..., 2] += 175
    return frame


# ---------------------------------------------------------------------------- InsightFace

class FakeInsightFace:
    """A detection as insightface.app.common.Face exposes it."""

    def __init__(self, bbox, det_score, landmark_2d_106):
        self.bbox = np.asarray(bbox, dtype=np.float32)
        self.det_score = np.float32(det_score)
        self.landmark_2d_106 = np.asarray(landmark_2d_106, dtype=np.float32)


def make_fake_face_analysis(detections: list[FakeInsightFace]):
    """A FaceAnalysis class whose instances record their arguments and return `detections`."""

    class FakeFaceAnalysis:
        instances = []

        def __init__(self, name="buffalo_l", root="~/.insightface", allowed_modules=None,
                     **kwargs):
            self.init_args = dict(name=name, root=root, allowed_modules=allowed_modules, **kwargs)
            self.prepare_args = None
            self.images = []
            FakeFaceAnalysis.instances.append(self)

        def prepare(self, ctx_id, det_thresh=0.5, det_size=(640, 640)):
            self.prepare_args = dict(ctx_id=ctx_id, det_thresh=det_thresh, det_size=det_size)

        def get(self, img, max_num=0):
            assert self.prepare_args is not None, "get() called before prepare()"
            self.images.append(np.array(img, copy=True))
            self.contiguous = img.flags["C_CONTIGUOUS"]
            return list(detections)

    return FakeFaceAnalysis


@pytest.fixture
def buffalo_checkpoints(tmp_path) -> Path:
    """checkpoints/ holding auxiliary/models/buffalo_l with the two ONNX files the backend uses."""
    folder = tmp_path / "checkpoints" / "auxiliary" / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    for name in BUFFALO_FILES:
        (folder / name).write_bytes(b"onnx")
    return tmp_path / "checkpoints"


@pytest.fixture
def fake_insightface(monkeypatch):
    """Install fake `insightface` + `insightface.app`; returns a setter for the detections."""

    def install(detections):
        cls = make_fake_face_analysis(detections)
        app = install_module(monkeypatch, "insightface.app", FaceAnalysis=cls)
        install_module(monkeypatch, "insightface", app=app)
        return cls

    return install


def landmarks_106(seed: int, x0: float, y0: float) -> np.ndarray:
    """Random 106 points near (x0, y0) with fractional parts that exercise rounding."""
    rng = np.random.default_rng(seed)
    points = np.array([x0, y0]) + rng.uniform(0, 40, (106, 2))
    # Raw x.5 values round half to even, and the 4-point nose mean is exactly x.5. For
    # x0 = 100, y0 = 200: x 109.5, 110.5, 111.4, 110.6 -> 110, 110, 111, 111 -> 110.5 -> 110;
    # y 211.5, 212.4, 212.6, 213.4 -> 212, 212, 213, 213 -> 212.5 -> 212
    # (half-up rounding would give 111 and 213).
    points[[74, 77, 83, 86]] = [[x0 + 9.5, y0 + 11.5], [x0 + 10.5, y0 + 12.4],
                                [x0 + 11.4, y0 + 12.6], [x0 + 10.6, y0 + 13.4]]
    return points.astype(np.float32)


def spec_insightface_points(landmarks: np.ndarray) -> np.ndarray:
    """InsightFace (docs/face-processing.md): round the 106 points to integers, mean each group, round half to even."""
    rounded = [[round(float(v)) for v in point] for point in landmarks]  # Python: half to even
    points = []
    for group in INSIGHTFACE_GROUPS:
        means = [Fraction(sum(rounded[i][k] for i in group), len(group)) for k in (0, 1)]
        points.append([round(m) for m in means])  # Fraction.__round__: half to even
    return np.array(points, dtype=np.float64)


def test_insightface_points_follow_spec_rounding(fake_insightface, buffalo_checkpoints):
    landmarks = landmarks_106(seed=1, x0=100.0, y0=200.0)
    fake_insightface([FakeInsightFace([90, 180, 200, 330], 0.9, landmarks)])
    detector = make_face_detector("insightface", checkpoints_dir=buffalo_checkpoints,
                                  device="cpu")
    faces = detector.detect(rgb_frame())

    assert len(faces) == 1
    expected = spec_insightface_points(landmarks)
    np.testing.assert_array_equal(faces[0].points, expected)
    # The nose mean is exactly 110.5 / 212.5 here: half to even, not half up.
    assert expected[2].tolist() == [110.0, 212.0]
    assert faces[0].points.shape == (3, 2)
    assert faces[0].score == pytest.approx(0.9)


# (bbox x1, y1, x2, y2), det_score, kept by the reference filter (integer box, docs/face-processing.md)
FILTER_CASES = [
    ((0, 0, 50, 80), 0.9, True),          # minimum width and height
    ((0, 0, 49, 80), 0.9, False),         # width 49 < 50
    ((0, 0, 50, 79), 0.9, False),         # height 79 < 80
    ((0, 0, 150, 100), 0.9, True),        # aspect exactly 1.5
    ((0, 0, 151, 100), 0.9, False),       # aspect 1.51 > 1.5
    ((0, 0, 50, 250), 0.9, True),         # aspect exactly 0.2
    ((0, 0, 50, 251), 0.9, False),        # aspect < 0.2
    ((0, 0, 100, 100), 0.5, True),        # score exactly at the threshold
    ((0, 0, 100, 100), 0.49, False),      # score below 0.5
    ((0.9, 0, 50.5, 80.9), 0.9, True),    # float width 49.6, integer box 0..50 -> kept
    ((0, 0, 150.9, 100.5), 0.9, True),    # float aspect 1.5015, integer 150/100 -> kept
]


@pytest.mark.parametrize("bbox, score, kept", FILTER_CASES)
def test_insightface_box_filters(fake_insightface, buffalo_checkpoints, bbox, score, kept):
    fake_insightface([FakeInsightFace(bbox, score, landmarks_106(2, bbox[0], bbox[1]))])
    detector = make_face_detector("insightface", checkpoints_dir=buffalo_checkpoints,
                                  device="cpu")
    faces = detector.detect(rgb_frame())
    assert len(faces) == (1 if kept else 0)


def test_insightface_keeps_order_and_tracker_picks_reference_face(fake_insightface,
                                                                 buffalo_checkpoints):
    """detect() returns the kept faces in backend order; the tracker picks the reference face:
    largest integer-box area, the first one winning ties."""
    boxes_scores = [
        ((0.9, 0, 100.8, 100), 0.9),    # A: integer area 100*100 (float 99.9*100)
        ((300, 0, 360, 90), 0.9),       # small valid face
        ((200, 0, 300, 100.95), 0.9),   # B: integer area 100*100 too (float 100*100.95)
        ((0, 150, 300, 450), 0.3),      # largest, but low score
        ((0, 200, 600, 300), 0.9),      # wide strip, aspect 6
        ((400, 0, 430, 200), 0.9),      # narrow, width 30
    ]
    detections = [FakeInsightFace(box, score, landmarks_106(10 + i, box[0], box[1]))
                  for i, (box, score) in enumerate(boxes_scores)]
    fake_insightface(detections)
    detector = make_face_detector("insightface", checkpoints_dir=buffalo_checkpoints,
                                  device="cpu")
    frame = rgb_frame()

    faces = detector.detect(frame)
    assert len(faces) == 3
    for face, index in zip(faces, [0, 1, 2]):
        np.testing.assert_array_equal(
            face.points, spec_insightface_points(detections[index].landmark_2d_106))

    chosen = FaceTracker(detector).track(frame)
    np.testing.assert_array_equal(chosen.points,
                                  spec_insightface_points(detections[0].landmark_2d_106))


def test_insightface_receives_bgr(fake_insightface, buffalo_checkpoints):
    cls = fake_insightface([])
    detector = make_face_detector("insightface", checkpoints_dir=buffalo_checkpoints,
                                  device="cpu")
    frame = rgb_frame(seed=3)
    before = frame.copy()
    assert detector.detect(frame) == []

    (app,) = cls.instances
    (got,) = app.images
    np.testing.assert_array_equal(got, frame[:, :, ::-1])
    assert not np.array_equal(got, frame)
    assert app.contiguous  # cv2 inside insightface rejects negative strides
    np.testing.assert_array_equal(frame, before)  # caller's frame untouched


@pytest.mark.parametrize("device", ["cpu", None])
def test_insightface_cpu_arguments(fake_insightface, buffalo_checkpoints, device):
    cls = fake_insightface([])
    make_face_detector("insightface", checkpoints_dir=buffalo_checkpoints, device=device)
    (app,) = cls.instances
    assert app.init_args["name"] == "buffalo_l"
    assert Path(app.init_args["root"]) == buffalo_checkpoints / "auxiliary"
    assert set(app.init_args["allowed_modules"]) == {"detection", "landmark_2d_106"}
    assert app.init_args["providers"] == ["CPUExecutionProvider"]
    assert app.prepare_args["ctx_id"] < 0  # insightface: negative ctx_id = CPU
    assert tuple(app.prepare_args["det_size"]) == (512, 512)
    assert app.prepare_args["det_thresh"] == 0.5


def test_insightface_cuda_index_reaches_ctx_id(fake_insightface, buffalo_checkpoints):
    cls = fake_insightface([])
    make_face_detector("insightface", checkpoints_dir=buffalo_checkpoints, device="cuda:1")
    (app,) = cls.instances
    assert app.init_args["providers"][0] == "CUDAExecutionProvider"
    assert app.prepare_args["ctx_id"] == 1


def test_insightface_missing_model_file_names_it(fake_insightface, buffalo_checkpoints):
    fake_insightface([])
    (buffalo_checkpoints / "auxiliary" / "models" / "buffalo_l" / "det_10g.onnx").unlink()
    with pytest.raises(UserError) as info:
        make_face_detector("insightface", checkpoints_dir=buffalo_checkpoints, device="cpu")
    message = str(info.value)
    assert "det_10g.onnx" in message and "2d106det" not in message
    assert "buffalo_l" in message and "insightface" in message
    assert "not installed" not in message  # the fake package is importable


def make_absent(monkeypatch, *packages: str) -> None:
    """Make `packages` look not installed (find_spec says None, an import fails), installed or not."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.split(".")[0] in packages:
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            monkeypatch.delitem(sys.modules, name)
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError


def test_insightface_package_missing_with_models_present(monkeypatch, buffalo_checkpoints):
    make_absent(monkeypatch, "insightface")
    with pytest.raises(UserError, match="insightface.*pip install insightface") as info:
        make_face_detector("insightface", checkpoints_dir=buffalo_checkpoints, device="cpu")
    assert "missing" not in str(info.value)  # the model folder is there


def test_insightface_broken_install_is_a_user_error(monkeypatch, tmp_path, buffalo_checkpoints):
    """insightface is found but its import fails (its __init__ does this without onnxruntime)."""
    package = tmp_path / "site" / "insightface"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        'raise ImportError("Unable to import dependency onnxruntime.")\n')
    (package / "app.py").write_text("FaceAnalysis = None\n")
    for name in ("insightface", "insightface.app"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(UserError, match="insightface.*onnxruntime"):
        make_face_detector("insightface", checkpoints_dir=buffalo_checkpoints, device="cpu")


# ---------------------------------------------------------------------------- face_alignment

class FakeLandmarksType(enum.IntEnum):
    TWO_D = 1
    TWO_HALF_D = 2
    THREE_D = 3


def make_fake_face_alignment_class(landmark_sets, boxes):
    """FaceAlignment whose instances record their arguments and the torch hub files they see."""

    class FakeFaceAlignment:
        instances = []

        def __init__(self, landmarks_type, network_size=4, device="cuda", flip_input=False,
                     face_detector="sfd", face_detector_kwargs=None, verbose=False):
            import torch

            self.init_args = dict(landmarks_type=landmarks_type, device=device,
                                  flip_input=flip_input, face_detector=face_detector)
            # face_alignment loads its weights from <torch hub dir>/checkpoints/<file name>
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            self.hub_files = {name: (hub / name).read_bytes() for name in FAN_FILES
                              if (hub / name).exists()}
            self.images, self.calls = [], []
            FakeFaceAlignment.instances.append(self)

        def get_landmarks_from_image(self, image_or_path, detected_faces=None,
                                     return_bboxes=False, return_landmark_score=False):
            self.images.append(np.array(image_or_path, copy=True))
            self.calls.append(dict(return_bboxes=return_bboxes))
            wants_tuple = return_bboxes or return_landmark_score
            if not landmark_sets:
                return (None, None, None) if wants_tuple else None
            sets = [np.asarray(s, dtype=np.float32) for s in landmark_sets]
            if not wants_tuple:
                return sets
            scores = [np.ones(68, np.float32) for _ in sets]
            return sets, scores, [np.asarray(b, np.float32) for b in boxes]

    return FakeFaceAlignment


@pytest.fixture
def fan_checkpoints(tmp_path) -> Path:
    """checkpoints/auxiliary with the two face_alignment weight files."""
    root = tmp_path / "checkpoints" / "auxiliary"
    root.mkdir(parents=True)
    for name in FAN_FILES:
        (root / name).write_bytes(name.encode())
    return tmp_path / "checkpoints"


@pytest.fixture
def fake_face_alignment(monkeypatch):
    """Install a fake `face_alignment`; returns a setter for the landmark sets and boxes."""

    def install(landmark_sets, boxes):
        cls = make_fake_face_alignment_class(landmark_sets, boxes)
        install_module(monkeypatch, "face_alignment", FaceAlignment=cls,
                       LandmarksType=FakeLandmarksType)
        return cls

    return install


def landmarks_68(seed: int, x0: float, y0: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = np.array([x0, y0]) + rng.uniform(0, 60, (68, 2))
    points[17:22, 0] = x0 + np.array([1.5, 2.5, 3.5, 4.5, 5.5])  # mean 3.5: rounding would move it
    points[27:36, 1] = y0 + np.arange(9) + 0.25                   # mean 4.25
    return points.astype(np.float32)


def spec_fan_points(landmarks: np.ndarray) -> np.ndarray:
    """face_alignment (1.0 / 1.5, docs/face-processing.md): plain means of 17-21, 22-26, 27-35, not rounded."""
    rows = landmarks.astype(np.float64).tolist()
    return np.array([[sum(rows[i][k] for i in group) / len(group) for k in (0, 1)]
                     for group in FAN_GROUPS])


def test_face_alignment_points_boxes_and_order(fake_face_alignment, fan_checkpoints):
    sets = [landmarks_68(1, 10.0, 20.0), landmarks_68(2, 300.0, 40.0)]
    boxes = [[5, 15, 80, 95, 0.99], [290, 30, 400, 170, 0.87]]
    cls = fake_face_alignment(sets, boxes)
    detector = make_face_detector("face_alignment", checkpoints_dir=fan_checkpoints,
                                  device="cpu")
    frame = rgb_frame(seed=4)
    faces = detector.detect(frame)

    assert len(faces) == 2  # backend order kept; the first is the 1.0 reference's choice
    for face, landmarks, box in zip(faces, sets, boxes):
        expected = spec_fan_points(landmarks)
        np.testing.assert_allclose(face.points, expected, rtol=0, atol=1e-9)
        np.testing.assert_allclose(face.box, box[:4], atol=1e-4)
        assert face.score == pytest.approx(box[4], abs=1e-6)
    assert faces[0].points[0, 0] == pytest.approx(13.5)  # not rounded
    assert not np.array_equal(faces[0].points, np.round(faces[0].points))

    (model,) = cls.instances
    (got,) = model.images
    np.testing.assert_array_equal(got, frame)  # face_alignment takes RGB as is

    tracker_choice = FaceTracker(detector).track(frame)
    np.testing.assert_allclose(tracker_choice.points, spec_fan_points(sets[1]), atol=1e-9)


def test_face_alignment_no_face(fake_face_alignment, fan_checkpoints):
    fake_face_alignment([], [])
    detector = make_face_detector("face_alignment", checkpoints_dir=fan_checkpoints,
                                  device="cpu")
    assert detector.detect(rgb_frame()) == []


def test_face_alignment_cpu_arguments_and_local_weights(fake_face_alignment, fan_checkpoints):
    import torch

    hub_before = torch.hub.get_dir()
    cls = fake_face_alignment([], [])
    make_face_detector("face_alignment", checkpoints_dir=fan_checkpoints, device="cpu")
    (model,) = cls.instances
    assert model.init_args["device"] == "cpu"  # the library's own default is "cuda"
    assert model.init_args["landmarks_type"] == FakeLandmarksType.TWO_D
    assert model.init_args["face_detector"] == "sfd"
    assert model.init_args["flip_input"] is False
    # both weight files were visible in the torch hub cache while the model was built
    assert model.hub_files == {name: name.encode() for name in FAN_FILES}
    assert torch.hub.get_dir() == hub_before


def test_face_alignment_one_missing_weight_named(fake_face_alignment, fan_checkpoints):
    fake_face_alignment([], [])
    (fan_checkpoints / "auxiliary" / FAN_FILES[1]).unlink()
    with pytest.raises(UserError) as info:
        make_face_detector("face_alignment", checkpoints_dir=fan_checkpoints, device="cpu")
    message = str(info.value)
    assert FAN_FILES[1] in message and FAN_FILES[0] not in message
    assert "huggingface-cli download" in message
    assert "not installed" not in message


def test_face_alignment_package_missing_with_weights_present(monkeypatch, fan_checkpoints):
    make_absent(monkeypatch, "face_alignment")
    with pytest.raises(UserError, match="face_alignment.*pip install face-alignment") as info:
        make_face_detector("face_alignment", checkpoints_dir=fan_checkpoints, device="cpu")
    assert "missing" not in str(info.value)
