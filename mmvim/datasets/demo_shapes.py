"""Seeded synthetic scenes for the demo, written in ADE20K's on-disk layout.

    <root>/images/{training,validation}/demo_XXXXX.jpg
    <root>/annotations/{training,validation}/demo_XXXXX.png   (uint8 ids)

Each scene has a textured, shaded background and 2-5 overlapping objects of
three classes with distinct shape, colour and texture (disc: warm solid,
square: green stripes, triangle: blue checks). Masks are exact: an object
drawn later covers the earlier ones in both the image and the mask.
Generation is deterministic for a given seed and cached: a second call with
the same settings returns immediately. :func:`make_demo_detection` writes the
same scenes as a COCO instance dataset (boxes and masks of the visible parts).
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
# Detection uses the objects only (no background class), COCO-style ids 1..3.
DET_CLASSES = CLASSES[1:]
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


def _render(seed: int, size: int) -> Tuple[np.ndarray, list]:
    """BGR uint8 image and [(class id, visible bool mask)] in drawing order."""
    rng = np.random.default_rng(seed)
    img = _background(rng, size)
    objects = []
    for _ in range(int(rng.integers(2, 6))):
        kind = int(rng.integers(1, len(CLASSES)))
        mask = _shape_mask(kind, rng, size)
        img[mask] = _texture(kind, rng, size)[mask]
        for _, earlier in objects:  # later objects occlude earlier ones
            earlier &= ~mask
        objects.append((kind, mask))
    img += rng.normal(0, 4, img.shape)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    return rgb[..., ::-1].copy(), objects


def render_scene(seed: int, size: int = 128) -> Tuple[np.ndarray, np.ndarray]:
    """One scene: (BGR uint8 image HxWx3, uint8 label map HxW)."""
    img, objects = _render(seed, size)
    label = np.zeros((size, size), np.uint8)
    for kind, mask in objects:
        label[mask] = kind
    return img, label


def render_instances(seed: int, size: int = 128,
                     min_area: int = 16) -> Tuple[np.ndarray, list]:
    """The same scene as :func:`render_scene` with instance annotations.

    Returns the BGR image and a list of ``(class id, visible mask)`` for each
    object whose visible part covers at least ``min_area`` pixels.
    """
    img, objects = _render(seed, size)
    return img, [(k, m) for k, m in objects if int(m.sum()) >= min_area]


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


def _coco_annotation(mask: np.ndarray, kind: int, image_id: int,
                     ann_id: int) -> dict:
    from pycocotools import mask as mask_utils  # an mmdet dependency
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    rle['counts'] = rle['counts'].decode('ascii')
    return dict(id=ann_id, image_id=image_id, category_id=kind,
                segmentation=rle, area=float(mask.sum()),
                bbox=[x, y, w, h], iscrowd=0)


def make_demo_detection(root: str, num_train: int = 200, num_val: int = 40,
                        size: int = 128, seed: int = 0) -> str:
    """Write (or reuse) the demo scenes as a COCO instance dataset.

    Layout (as mmdet's ``coco_instance`` base expects)::

        <root>/train2017/demo_XXXXX.jpg, <root>/val2017/demo_XXXXX.jpg
        <root>/annotations/instances_{train,val}2017.json

    Boxes and RLE masks are the visible parts of each object; the scenes
    are the ones :func:`make_demo_segmentation` writes for the same seed.
    """
    meta = dict(version=GENERATOR_VERSION, task='detection',
                num_train=num_train, num_val=num_val, size=size, seed=seed,
                classes=DET_CLASSES)
    meta_file = osp.join(root, 'meta.json')
    if osp.isfile(meta_file):
        with open(meta_file) as f:
            if json.load(f) == json.loads(json.dumps(meta)):
                return root
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    categories = [dict(id=i + 1, name=n) for i, n in enumerate(DET_CLASSES)]
    for split, count, offset in (('train', num_train, 0),
                                 ('val', num_val, 10_000_000)):
        img_dir = osp.join(root, f'{split}2017')
        os.makedirs(img_dir, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img, objects = render_instances(
                seed * 100_000_019 + offset + i, size)
            name = f'demo_{i:05d}.jpg'
            cv2.imwrite(osp.join(img_dir, name), img,
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append(dict(id=i + 1, file_name=name, height=size,
                               width=size))
            for kind, mask in objects:
                annotations.append(_coco_annotation(
                    mask, kind, i + 1, len(annotations) + 1))
        with open(osp.join(root, 'annotations',
                           f'instances_{split}2017.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=categories), f)
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
