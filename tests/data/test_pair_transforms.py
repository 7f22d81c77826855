"""The official "albef" / "albef_randaug" transforms, against PIL and OpenCV references."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from fiber_det.data.pair_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDAUG_OPS,
    ALBEFRandAugment,
    build_pair_transform,
)

H, W = 48, 64
FILL = (128, 128, 128)


def smooth_image() -> np.ndarray:
    """(H, W, 3) uint8 without sharp edges (interpolation differences stay small)."""
    y, x = np.mgrid[0:H, 0:W]
    channels = [20 + 3 * x, 30 + 4 * y, 128 + 60 * np.sin(x / 5) * np.cos(y / 7)]
    return np.stack(channels, -1).astype(np.uint8)


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def as_array(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def test_albef_test_transform_is_pil_bicubic_resize_and_imagenet_normalisation():
    rng = np.random.default_rng(0)
    pil = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    out = build_pair_transform("albef", 24)(pil)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    ref = np.asarray(pil.resize((24, 24), Image.BICUBIC), dtype=np.float32) / 255.0
    ref = (ref - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    torch.testing.assert_close(out, torch.from_numpy(ref.transpose(2, 0, 1)).float())


# The official ops (ALBEF randaugment.py) are cv2.warpAffine with these forward matrices,
# bilinear, border value 128; magnitude 7 of 10: shear 0.21, translation 7 px, rotation 21 deg.
def _official_matrix(op: str, sign: float) -> np.ndarray:
    s, t = 0.21 * sign, 7.0 * sign
    if op == "ShearX":
        return np.float32([[1, s, 0], [0, 1, 0]])
    if op == "ShearY":
        return np.float32([[1, 0, 0], [s, 1, 0]])
    if op == "TranslateX":
        return np.float32([[1, 0, -t], [0, 1, 0]])
    if op == "TranslateY":
        return np.float32([[1, 0, 0], [0, 1, -t]])
    return cv2.getRotationMatrix2D((W / 2, H / 2), 21.0 * sign, 1.0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("op", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_geometric_ops_match_the_official_opencv_warps(op, sign):
    img = smooth_image()
    matrix = _official_matrix(op, sign)
    ref = cv2.warpAffine(img, matrix, (W, H), flags=cv2.INTER_LINEAR, borderValue=FILL)
    out = as_array(ALBEFRandAugment().apply(op, as_tensor(img), sign)).astype(int)
    # compare where the source point is well inside the image (the border blending differs)
    inverse = cv2.invertAffineTransform(matrix)
    y, x = np.mgrid[0:H, 0:W]
    sx = inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2]
    sy = inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2]
    inside = (sx > 1) & (sx < W - 2) & (sy > 1) & (sy < H - 2)
    outside = (sx < -1) | (sx > W) | (sy < -1) | (sy > H)
    assert inside.sum() > 0.5 * H * W
    assert np.abs(out - ref.astype(int))[inside].max() <= 2
    assert (out[outside] == 128).all()  # the official grey fill


def test_photometric_ops_match_their_definitions():
    img = smooth_image()
    aug = ALBEFRandAugment()
    # brightness 1.36: ALBEF's lookup table (multiply, clip, truncate)
    table = (np.arange(256, dtype=np.float32) * 1.36).clip(0, 255).astype(np.uint8)
    np.testing.assert_array_equal(as_array(aug.apply("Brightness", as_tensor(img))), table[img])
    pil = Image.fromarray(img)
    for op, ref in (("AutoContrast", ImageOps.autocontrast), ("Equalize", ImageOps.equalize)):
        out = as_array(aug.apply(op, as_tensor(img))).astype(int)
        assert np.abs(out - np.asarray(ref(pil), dtype=int)).max() <= 1, op
    # sharpness 1.36 away from the border: img + 0.36 (img - smoothed), smoothed by PIL's kernel
    kernel = np.ones((3, 3), np.float32)
    kernel[1, 1] = 5
    smoothed = np.rint(cv2.filter2D(img.astype(np.float32), -1, kernel / 13))
    ref = np.clip(smoothed + 1.36 * (img - smoothed), 0, 255)
    out = as_array(aug.apply("Sharpness", as_tensor(img))).astype(float)
    assert np.abs(out - ref)[1:-1, 1:-1].max() <= 1
    np.testing.assert_array_equal(out[0], img[0])  # the border is kept


def test_randaugment_draws_two_ops_with_replacement_each_applied_half_the_time(monkeypatch):
    aug = ALBEFRandAugment()
    applied = []
    monkeypatch.setattr(aug, "apply", lambda op, image, sign=1.0: applied.append(op) or image)
    torch.manual_seed(0)
    calls = 4000
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    for _ in range(calls):
        aug(image)
    # each op: 2 draws x 1/10 x p 0.5 = 0.1 applications per call (binomial sd ~0.005)
    for op in RANDAUG_OPS:
        assert abs(applied.count(op) / calls - 0.1) < 0.025, op
    assert abs(len(applied) / calls - 1.0) < 0.05


def test_albef_randaug_transform_is_seeded_and_random():
    pil = Image.fromarray(smooth_image())
    transform = build_pair_transform("albef_randaug", 32)
    torch.manual_seed(3)
    a = transform(pil)
    torch.manual_seed(3)
    b = transform(pil)
    c = transform(pil)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_transform_and_op_names():
    with pytest.raises(ValueError, match="TRAIN_TRANSFORM / TEST_TRANSFORM must be one of"):
        build_pair_transform("clip", 32)
    with pytest.raises(ValueError, match="unknown RandAugment ops"):
        ALBEFRandAugment(ops=("Solarise",))
