"""S3FD face detector for the LSE-C / LSE-D face tracks (latentsync/eval/s3fd.py, docs/evaluation.md)."""

import math

import numpy as np
import pytest
import torch

from latentsync.errors import UserError
from latentsync.eval import s3fd
from latentsync.face.detectors import Face

# Key names and shapes of syncnet_python's sfd_face.pth (its S3FDNet is loaded strictly from it).
_VGG = [(0, 64, 3, 3), (2, 64, 64, 3), (5, 128, 64, 3), (7, 128, 128, 3), (10, 256, 128, 3),
        (12, 256, 256, 3), (14, 256, 256, 3), (17, 512, 256, 3), (19, 512, 512, 3), (21, 512, 512, 3),
        (24, 512, 512, 3), (26, 512, 512, 3), (28, 512, 512, 3), (31, 1024, 512, 3), (33, 1024, 1024, 1)]
_EXTRAS = [(256, 1024, 1), (512, 256, 3), (128, 512, 1), (256, 128, 3)]
_SOURCES = [256, 512, 512, 1024, 512, 256]
SFD_FACE_KEYS = (
    [(f"vgg.{i}.{p}", (o, c, k, k) if p == "weight" else (o,)) for i, o, c, k in _VGG for p in ("weight", "bias")]
    + [("L2Norm3_3.weight", (256,)), ("L2Norm4_3.weight", (512,)), ("L2Norm5_3.weight", (512,))]
    + [(f"extras.{i}.{p}", (o, c, k, k) if p == "weight" else (o,))
       for i, (o, c, k) in enumerate(_EXTRAS) for p in ("weight", "bias")]
    + [(f"loc.{i}.{p}", (4, c, 3, 3) if p == "weight" else (4,))
       for i, c in enumerate(_SOURCES) for p in ("weight", "bias")]
    + [(f"conf.{i}.{p}", ((4 if i == 0 else 2), c, 3, 3) if p == "weight" else ((4 if i == 0 else 2),))
       for i, c in enumerate(_SOURCES) for p in ("weight", "bias")]
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return s3fd.S3FD().eval()


def test_state_dict_has_the_sfd_face_keys_and_shapes(net):
    state = net.state_dict()
    assert len(SFD_FACE_KEYS) == 65
    assert [(k, tuple(v.shape)) for k, v in state.items()] == SFD_FACE_KEYS
    assert torch.all(state["L2Norm3_3.weight"] == 10) and torch.all(state["L2Norm5_3.weight"] == 5)
    # fc6 is the dilated 3x3 convolution; pool3 rounds up
    assert net.vgg[31].dilation == (6, 6) and net.vgg[31].padding == (6, 6)
    assert net.vgg[16].ceil_mode and not net.vgg[23].ceil_mode


def test_save_load_round_trip_and_refusals(net, tmp_path):
    path = tmp_path / "sfd_face.pth"
    torch.save(net.state_dict(), path)
    loaded = s3fd.load_s3fd(path, "cpu")
    assert not loaded.training
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    from latentsync.eval import syncnet_v2 as sv

    detector = sv.make_detector("auto", s3fd_path=path, device="cpu")
    assert isinstance(detector, s3fd.S3FDDetector) and detector.name == "s3fd"

    renamed = dict(net.state_dict())
    renamed["vgg.0.kernel"] = renamed.pop("vgg.0.weight")
    bad = tmp_path / "renamed.pth"
    torch.save(renamed, bad)
    with pytest.raises(UserError, match=r"renamed\.pth: unexpected key 'vgg\.0\.kernel'"):
        s3fd.load_s3fd(bad, "cpu")

    fa_style = tmp_path / "s3fd-619a316812.pth"
    torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, fa_style)
    with pytest.raises(UserError, match="face_alignment"):
        s3fd.load_s3fd(fa_style, "cpu")
    with pytest.raises(UserError, match=r"missing\.pth: .*not found.*sfd_face\.pth"):
        s3fd.load_s3fd(tmp_path / "missing.pth", "cpu")


FEATURE_SIZES_64 = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # a 64x64 input


def test_priors_follow_the_feature_maps(net):
    _, _, sizes = net(torch.zeros(1, 3, 64, 64))
    assert sizes == FEATURE_SIZES_64
    priors = s3fd.prior_boxes(sizes, (64, 64))
    assert priors.shape == (256 + 64 + 16 + 4 + 1 + 1, 4)
    # map 0, row 2, column 5: centre (22, 10) px, side 16 px
    np.testing.assert_allclose(priors[2 * 16 + 5] * 64, [22, 10, 16, 16])
    # map 1 (stride 8, side 32), row 1, column 3: centre (28, 12)
    np.testing.assert_allclose(priors[256 + 1 * 8 + 3] * 64, [28, 12, 32, 32])
    # non-square input: fractions of width and height separately
    wide = s3fd.prior_boxes([(1, 2)], (4, 8), steps=(4,), sizes=(16,))
    np.testing.assert_allclose(wide, [[2 / 8, 2 / 4, 16 / 8, 16 / 4], [6 / 8, 2 / 4, 16 / 8, 16 / 4]])


def test_anchor_decoding_on_hand_made_maps():
    priors = s3fd.prior_boxes(FEATURE_SIZES_64, (64, 64))
    n = len(priors)
    loc = np.zeros((n, 4))
    scores = np.full(n, 0.01)
    scores[2 * 16 + 5] = 0.99  # prior centre (22, 10), side 16
    found = s3fd.select_detections(loc, scores, priors)
    assert found.shape == (1, 5)
    np.testing.assert_allclose(found[0, :4] * 64, [14, 2, 30, 18], atol=1e-9)
    assert found[0, 4] == pytest.approx(0.99)

    # centre moves by loc * 0.1 * prior side; size scales by exp(loc * 0.2)
    loc[2 * 16 + 5] = [1.0, -0.5, math.log(2) / 0.2, 0.0]
    found = s3fd.select_detections(loc, scores, priors)
    cx, cy, w, h = 22 + 1.6, 10 - 0.8, 32, 16
    np.testing.assert_allclose(found[0, :4] * 64, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-9)

    # candidates need a score above 0.05
    scores[2 * 16 + 5] = 0.04
    assert s3fd.select_detections(loc, scores, priors).shape == (0, 5)


def test_nms_drops_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 5, 10, 15]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    # box 1 wins; box 0 overlaps it with IoU 90/110; box 3 overlaps box 1 with IoU 45/155 = 0.29
    assert s3fd.nms(boxes, scores, 0.3).tolist() == [1, 2, 3]
    assert s3fd.nms(boxes, scores, 0.1).tolist() == [1, 2]
    assert s3fd.nms(boxes, scores, 0.95).tolist() == [1, 0, 2, 3]
    assert s3fd.nms(boxes, scores, 0.3, top_k=2).tolist() == [1]
    assert s3fd.nms(np.zeros((0, 4)), np.zeros(0), 0.3).tolist() == []


class HandMadeNet:
    """Stands in for S3FD: records its input and answers with fixed maps for a 64x64 input."""

    def __init__(self, confident: dict[int, float]):
        self.confident, self.inputs = confident, []

    def __call__(self, x):
        self.inputs.append(x)
        n = sum(h * w for h, w in FEATURE_SIZES_64)
        logits = torch.zeros(1, n, 2)
        logits[0, :, 0] = 5.0  # background
        for index, p in self.confident.items():
            logits[0, index, 1] = 5.0 + math.log(p / (1 - p))  # softmax face score = p
        return torch.zeros(1, n, 4), logits, FEATURE_SIZES_64


def test_detect_faces_preprocesses_and_scales_back_to_the_frame():
    frame = np.empty((256, 256, 3), np.uint8)
    frame[:] = (200, 117, 104)  # RGB
    fake = HandMadeNet({2 * 16 + 5: 0.97,  # map 0: box (14, 2, 30, 18) in the 64x64 input
                        256 + 4 * 8 + 4: 0.95,  # map 1: (20, 20, 52, 52)
                        256 + 1 * 8 + 3: 0.92,  # map 1: (12, -4, 44, 28), IoU 0.25 with the first
                        14 * 16 + 1: 0.85})  # map 0: (-2, 50, 14, 66), overlaps nothing
    found = s3fd.detect_faces(fake, frame, "cpu")
    x = fake.inputs[0]
    assert tuple(x.shape) == (1, 3, 64, 64)  # x0.25
    assert torch.all(x[0, 0] == 77) and torch.all(x[0, 1] == 0) and torch.all(x[0, 2] == 0)  # RGB - mean
    # 0.85 is below the 0.9 threshold, the 0.92 box falls to NMS 0.1 (kept by NMS 0.3);
    # boxes are in full-frame pixels, best first
    np.testing.assert_allclose(found[:, :4], [[14 * 4, 2 * 4, 30 * 4, 18 * 4], [(36 - 16) * 4, (36 - 16) * 4,
                                                                                (36 + 16) * 4, (36 + 16) * 4]],
                               atol=1e-6)
    np.testing.assert_allclose(found[:, 4], [0.97, 0.95], atol=1e-5)
    looser = s3fd.detect_faces(fake, frame, "cpu", threshold=0.8)
    np.testing.assert_allclose(looser[:, 4], [0.97, 0.95, 0.85], atol=1e-5)
    np.testing.assert_allclose(looser[2, :4], [-8, 200, 56, 264], atol=1e-6)

    detector = s3fd.S3FDDetector(fake, "cpu")
    faces = detector.detect(frame)
    assert all(isinstance(f, Face) for f in faces) and len(faces) == 2
    assert faces[0].score == pytest.approx(0.97, abs=1e-5)
    points = faces[0].points
    assert points.shape == (3, 2) and points[0, 0] < points[1, 0] and points[0, 1] < points[2, 1]
    assert np.all((points >= faces[0].box[:2]) & (points <= faces[0].box[2:]))


def test_full_forward_of_a_random_network(net):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # 64x64 network input
    faces = s3fd.S3FDDetector(net, "cpu").detect(frame)
    assert isinstance(faces, list)
    found = s3fd.detect_faces(net, frame, "cpu", threshold=0.0)
    assert found.ndim == 2 and found.shape[1] == 5 and len(found) <= 750
    assert np.all(np.diff(found[:, 4]) <= 0)


def test_auto_choice_and_missing_weights(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING"):
        assert s3fd.choose_face_detector("auto") == "mediapipe"
    assert "not comparable" in caplog.text
    with pytest.raises(UserError, match="sfd_face.pth: .*not found"):
        s3fd.choose_face_detector("s3fd")
    with pytest.raises(UserError, match="mine.pth: .*not found"):
        s3fd.choose_face_detector("auto", tmp_path / "mine.pth")
    weights = tmp_path / "checkpoints" / "auxiliary" / "sfd_face.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert s3fd.choose_face_detector("auto") == "s3fd"
    assert s3fd.choose_face_detector("mediapipe") == "mediapipe"


def test_eval_sync_conf_with_missing_s3fd_weights_exits_2(tmp_path, capsys):
    from scripts import eval_sync_conf

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    code = eval_sync_conf.main(["--video_path", str(video), "--face_detector", "s3fd",
                                "--s3fd_path", str(tmp_path / "nope_sfd.pth"), "--device", "cpu"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "nope_sfd.pth" in lines[0] and "not found" in lines[0]
