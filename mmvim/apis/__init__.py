"""High-level APIs: inference with mmseg's / mmdet's inferencers.

Not imported by ``import mmvim`` (it pulls in ``mmseg.apis`` and
``mmdet.apis``); ``from mmvim.apis import build_inferencer``.
"""
from .inference import (
    MMVimDetInferencer,
    MMVimSegInferencer,
    build_inferencer,
    config_dataset_meta,
)

__all__ = ['build_inferencer', 'MMVimSegInferencer', 'MMVimDetInferencer',
           'config_dataset_meta']
