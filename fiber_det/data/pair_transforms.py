"""Image transforms of FIBER stage 1 (the official "albef" and "albef_randaug"), on torchvision.

The official coarse-grained code (microsoft/FIBER ``coarse_grained/fiber/transforms/``) takes its
transforms from ALBEF (Li et al. 2021, salesforce/ALBEF ``dataset/randaugment.py``):

- ``"albef"``: resize to S x S (bicubic, PIL), to [0, 1], ImageNet mean / std. The official
  pre-training recipe uses it for training too (``train_transform_keys = ["albef"]``), and every
  recipe for evaluation.
- ``"albef_randaug"`` (retrieval, VQA, NLVR2 fine-tuning): random resized crop to S x S with scale
  (0.5, 1) (bicubic), horizontal flip with p 0.5, ALBEF's RandAugment (:class:`ALBEFRandAugment`),
  then as above.

Both take a PIL RGB image and return a float32 (3, S, S) tensor. Random draws come from the global
torch generator (detectron2 seeds it in every data-loader worker).
"""

import math
from typing import Callable, Dict, Sequence, Tuple

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

__all__ = [
    "ALBEFRandAugment",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAIR_TRANSFORMS",
    "RANDAUG_OPS",
    "build_pair_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ALBEF's op list for the official "albef_randaug" (Solarize, Color, Contrast, Posterize dropped).
RANDAUG_OPS = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)
RANDOM_CROP_SCALE = (0.5, 1.0)  # official RandomResizedCrop scale of "albef_randaug"


class ALBEFRandAugment(nn.Module):
    """ALBEF's RandAugment on a (3, H, W) uint8 tensor (not torchvision's ``RandAugment``).

    ``num_ops`` ops are drawn uniformly with replacement from ``ops``; each is applied with
    probability ``prob``. With magnitude m out of ``max_level`` (official 7 of 10):
    brightness and sharpness use the factor 0.1 + 1.8 m / max_level (1.36: always brighter and
    sharper, no random sign), shears the factor 0.3 m / max_level (0.21) about the top-left pixel,
    translations m / max_level x ``translate_pixels`` pixels (7 px, whatever the image size),
    rotations 30 m / max_level degrees (21) about the image centre, each with a random sign and
    ``fill`` outside the image; autocontrast and equalize are PIL's. Geometric ops interpolate
    bilinearly and use OpenCV's pixel conventions (as ALBEF's ``cv2.warpAffine``).

    One deliberate difference: ALBEF's sharpness casts values above 255 or below 0 to uint8
    without clipping (they wrap around); here they are clipped (torchvision).
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 7,
        *,
        ops: Sequence[str] = RANDAUG_OPS,
        prob: float = 0.5,
        max_level: float = 10,
        translate_pixels: float = 10,
        fill: Sequence[int] = (128, 128, 128),
    ):
        super().__init__()
        unknown = [op for op in ops if op not in _OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment ops {unknown}; known: {sorted(_OPS)}")
        if not ops or num_ops < 0:
            raise ValueError("RandAugment needs at least one op and num_ops >= 0")
        self.num_ops = num_ops
        self.ops = tuple(ops)
        self.prob = prob
        level = magnitude / max_level
        self.enhance_factor = 0.1 + 1.8 * level
        self.shear = 0.3 * level
        self.translate = level * translate_pixels
        self.degrees = 30.0 * level
        self.fill = [float(v) for v in fill]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: (3, H, W) uint8 -> (3, H, W) uint8."""
        for k in torch.randint(len(self.ops), (self.num_ops,)).tolist():
            if torch.rand(()).item() >= self.prob:
                continue
            image = self.apply(self.ops[k], image, self._sign())
        return image

    def _sign(self) -> float:
        return -1.0 if torch.rand(()).item() < 0.5 else 1.0

    def apply(self, op: str, image: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
        """Apply one op (``sign`` flips geometric ops; ignored by the others)."""
        return _OPS[op](self, image, sign)

    def _affine(self, image, *, angle=0.0, translate=(0.0, 0.0), shear=(0.0, 0.0), center=None):
        return F.affine(
            image,
            angle=angle,
            translate=list(translate),
            scale=1.0,
            shear=list(shear),
            interpolation=InterpolationMode.BILINEAR,
            fill=self.fill,
            center=center,
        )

    # OpenCV puts pixel centres at integer coordinates; torchvision's tensor ``center`` is
    # measured from the image corner, so pixel (0, 0)'s centre is (0.5, 0.5) there, and
    # OpenCV's rotation centre (W / 2, H / 2) is (W / 2 + 0.5, H / 2 + 0.5).
    def _shear_x(self, image, sign):
        # x' = x + s y: torchvision's shear matrix has -tan(shear) in that place.
        degrees = -math.degrees(math.atan(sign * self.shear))
        return self._affine(image, shear=(degrees, 0.0), center=[0.5, 0.5])

    def _shear_y(self, image, sign):
        degrees = -math.degrees(math.atan(sign * self.shear))
        return self._affine(image, shear=(0.0, degrees), center=[0.5, 0.5])

    def _translate_x(self, image, sign):
        return self._affine(image, translate=(-sign * self.translate, 0.0))

    def _translate_y(self, image, sign):
        return self._affine(image, translate=(0.0, -sign * self.translate))

    def _rotate(self, image, sign):
        # OpenCV's positive angle turns the content counter-clockwise: torchvision's affine
        # angle is clockwise.
        height, width = image.shape[-2:]
        center = [width / 2 + 0.5, height / 2 + 0.5]
        return self._affine(image, angle=-sign * self.degrees, center=center)


_OPS: Dict[str, Callable] = {
    "Identity": lambda self, image, sign: image,
    "AutoContrast": lambda self, image, sign: F.autocontrast(image),
    "Equalize": lambda self, image, sign: F.equalize(image),
    "Brightness": lambda self, image, sign: F.adjust_brightness(image, self.enhance_factor),
    "Sharpness": lambda self, image, sign: F.adjust_sharpness(image, self.enhance_factor),
    "ShearX": ALBEFRandAugment._shear_x,
    "ShearY": ALBEFRandAugment._shear_y,
    "TranslateX": ALBEFRandAugment._translate_x,
    "TranslateY": ALBEFRandAugment._translate_y,
    "Rotate": ALBEFRandAugment._rotate,
}


def _normalize() -> Tuple[nn.Module, ...]:
    return (T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD))


def albef_transform(image_size: int) -> T.Compose:
    """Official "albef": PIL image -> bicubic resize to (S, S) -> normalised (3, S, S) float."""
    return T.Compose(
        [
            T.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
            T.PILToTensor(),
            *_normalize(),
        ]
    )


def albef_randaug_transform(image_size: int) -> T.Compose:
    """Official "albef_randaug": random resized crop, flip, ALBEF RandAugment(2, 7), normalise."""
    return T.Compose(
        [
            T.RandomResizedCrop(
                image_size, scale=RANDOM_CROP_SCALE, interpolation=InterpolationMode.BICUBIC
            ),
            T.RandomHorizontalFlip(),
            T.PILToTensor(),
            ALBEFRandAugment(2, 7),
            *_normalize(),
        ]
    )


PAIR_TRANSFORMS: Dict[str, Callable[[int], T.Compose]] = {
    "albef": albef_transform,
    "albef_randaug": albef_randaug_transform,
}


def build_pair_transform(name: str, image_size: int) -> T.Compose:
    """The transform ``name`` (``INPUT.COARSE.TRAIN_TRANSFORM`` / ``TEST_TRANSFORM``) at size S."""
    if name not in PAIR_TRANSFORMS:
        raise ValueError(
            f"unknown image-text transform {name!r}: INPUT.COARSE.TRAIN_TRANSFORM / "
            f"TEST_TRANSFORM must be one of {sorted(PAIR_TRANSFORMS)}"
        )
    if image_size <= 0:
        raise ValueError(f"INPUT.COARSE.IMAGE_SIZE must be positive, got {image_size}")
    return PAIR_TRANSFORMS[name](image_size)
