"""BiRefNet's training augmentation (upstream ``preproc_methods = ['flip', 'enhance', 'rotate', 'pepper']``).

Upstream resizes image and mask to the training size with OpenCV's ``INTER_LINEAR`` when it loads them, then
flips (done by :class:`~dsunet_hf.data.SegmentationTransform`, p=0.5), rotates by an integer angle in
[-15, 15) with p=0.2 (bicubic, image and mask), changes brightness and contrast (x0.5..1.5), colour (x0..2)
and sharpness (x0..3) in steps of 0.1 with PIL's ``ImageEnhance``, and sets 0.15 % of the pixels to black or
white (pepper noise). Every draw comes from the ``rng`` the transform seeds with (seed, epoch, sample), so a
resumed run augments each sample as before.
"""

from __future__ import annotations

import random

import cv2  # installed with pysodmetrics (it depends on OpenCV)
import numpy as np
from PIL import Image, ImageEnhance

ROTATION_PROBABILITY = 0.2
MAX_ROTATION_DEGREES = 15
PEPPER_FRACTION = 0.0015


def resize_like_upstream(image: Image.Image, mask: np.ndarray, size: dict[str, int]) -> tuple[Image.Image, np.ndarray]:
    """Image and mask at the training size with cv2 ``INTER_LINEAR`` (no antialiasing, unlike PIL's)."""
    width, height = size["width"], size["height"]
    pixels = cv2.resize(np.asarray(image), (width, height), interpolation=cv2.INTER_LINEAR)
    gray = cv2.resize(np.round(mask * 255.0).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
    return Image.fromarray(pixels), gray.astype(np.float32) / np.float32(255.0)


def enhance_colours(image: Image.Image, rng: random.Random) -> Image.Image:
    for enhancer, low, high in ((ImageEnhance.Brightness, 5, 15), (ImageEnhance.Contrast, 5, 15),
                                (ImageEnhance.Color, 0, 20), (ImageEnhance.Sharpness, 0, 30)):
        image = enhancer(image).enhance(rng.randint(low, high) / 10.0)
    return image


def add_pepper_noise(image: Image.Image, rng: random.Random) -> Image.Image:
    pixels = np.array(image)
    height, width = pixels.shape[:2]
    for _ in range(int(PEPPER_FRACTION * height * width)):
        pixels[rng.randint(0, height - 1), rng.randint(0, width - 1)] = rng.randint(0, 1) * 255
    return Image.fromarray(pixels)


def birefnet_training_augmentation(image: Image.Image, mask: np.ndarray, rng: random.Random,
                                   size: dict[str, int]) -> tuple[Image.Image, np.ndarray]:
    """The (already flipped) training pair -> resized, rotated, colour-enhanced and peppered, at ``size``."""
    image, mask = resize_like_upstream(image, mask, size)
    if rng.random() < ROTATION_PROBABILITY:
        angle = rng.randrange(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)
        image = image.rotate(angle, Image.Resampling.BICUBIC)
        gray = Image.fromarray(np.round(mask * 255.0).astype(np.uint8)).rotate(angle, Image.Resampling.BICUBIC)
        mask = np.asarray(gray, dtype=np.float32) / np.float32(255.0)
    return add_pepper_noise(enhance_colours(image, rng), rng), mask
