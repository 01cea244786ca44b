"""Seeded synthetic scenes for the demo, written in ADE20K's on-disk layout.

    <root>/images/{training,validation}/demo_XXXXX.jpg
    <root>/annotations/{training,validation}/demo_XXXXX.png   (uint8 ids)

Each scene has a textured, shaded background and 2-5 overlapping objects of
three classes with distinct shape, colour and texture (disc: warm solid,
square: green stripes, triangle: blue checks). Masks are exact: an object
drawn later covers the earlier ones in both the image and the mask.
Generation is deterministic for a given seed and cached: a second call with
the same settings returns immediately.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Tuple

import cv2
import numpy as np
from mmseg.datasets import BaseSegDataset

from ..registry import register_dataset

CLASSES = ('background', 'disc', 'square', 'triangle')
PALETTE = [[40, 40, 40], [230, 90, 40], [60, 200, 80], [50, 110, 230]]
GENERATOR_VERSION = 1


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth two-colour gradient plus noise (float32 HxWx3 in [0, 255])."""
    c0, c1 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    img += rng.normal(0, 12, (size, size, 3))
    return img.astype(np.float32)


def _texture(kind: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Per-class appearance (float32 HxWx3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 1:  # disc: warm, solid, slight shading
        base = np.array([230, 90, 40]) + rng.uniform(-20, 20, 3)
        shade = 0.85 + 0.15 * np.sin(xx / size * np.pi)[..., None]
        return (base * shade).astype(np.float32)
    if kind == 2:  # square: green with diagonal stripes
        base = np.array([60, 200, 80]) + rng.uniform(-20, 20, 3)
        period = rng.uniform(5, 9)
        stripes = (np.sin((xx + yy) / period * np.pi) > 0)[..., None]
        return np.where(stripes, base, base * 0.55).astype(np.float32)
    # triangle: blue with a checkerboard
    base = np.array([50, 110, 230]) + rng.uniform(-20, 20, 3)
    cell = int(rng.integers(4, 8))
    checks = (((xx // cell) + (yy // cell)) % 2 == 0)[..., None]
    return np.where(checks, base, base * 0.6 + 60).astype(np.float32)


def _shape_mask(kind: int, rng: np.random.Generator,
                size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    r = int(rng.uniform(0.12, 0.25) * size)
    cx, cy = (int(v) for v in rng.integers(r // 2, size - r // 2, 2))
    if kind == 1:
        cv2.circle(mask, (cx, cy), r, 1, -1)
    elif kind == 2:
        angle = rng.uniform(0, 90)
        box = cv2.boxPoints(((cx, cy), (1.6 * r, 1.6 * r), angle))
        cv2.fillPoly(mask, [box.astype(np.int32)], 1)
    else:
        a0 = rng.uniform(0, 2 * np.pi)
        pts = [(cx + r * np.cos(a0 + k * 2 * np.pi / 3),
                cy + r * np.sin(a0 + k * 2 * np.pi / 3)) for k in range(3)]
        cv2.fillPoly(mask, [np.array(pts, np.int32)], 1)
    return mask.astype(bool)


def render_scene(seed: int, size: int = 128) -> Tuple[np.ndarray, np.ndarray]:
    """One scene: (BGR uint8 image HxWx3, uint8 label map HxW)."""
    rng = np.random.default_rng(seed)
    img = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        kind = int(rng.integers(1, len(CLASSES)))
        mask = _shape_mask(kind, rng, size)
        img[mask] = _texture(kind, rng, size)[mask]
        label[mask] = kind
    img += rng.normal(0, 4, img.shape)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    return rgb[..., ::-1].copy(), label


def make_demo_segmentation(root: str, num_train: int = 200,
                           num_val: int = 40, size: int = 128,
                           seed: int = 0) -> str:
    """Write (or reuse) the demo dataset under ``root``; returns ``root``."""
    meta = dict(version=GENERATOR_VERSION, num_train=num_train,
                num_val=num_val, size=size, seed=seed, classes=CLASSES)
    meta_file = osp.join(root, 'meta.json')
    if osp.isfile(meta_file):
        with open(meta_file) as f:
            if json.load(f) == json.loads(json.dumps(meta)):
                return root
    for split, count, offset in (('training', num_train, 0),
                                 ('validation', num_val, 10_000_000)):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(count):
            img, label = render_scene(seed * 100_000_019 + offset + i, size)
            name = f'demo_{i:05d}'
            cv2.imwrite(osp.join(img_dir, name + '.jpg'), img,
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(osp.join(ann_dir, name + '.png'), label)
    with open(meta_file, 'w') as f:
        json.dump(meta, f, indent=1)
    return root


@register_dataset()
class DemoShapesDataset(BaseSegDataset):
    """The demo scenes as an mmseg dataset (ADE20K layout, class 0 is a real
    'background' class, so ``reduce_zero_label`` is off)."""

    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self, img_suffix: str = '.jpg',
                 seg_map_suffix: str = '.png', **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=False, **kwargs)
