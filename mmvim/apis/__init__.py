"""High-level APIs: inference with mmseg's / mmdet's inferencers.

Not imported by ``import mmvim`` (it pulls in ``mmseg.apis`` and
``mmdet.apis``); ``from mmvim.apis import build_inferencer``.
"""
from .inference import (
    InferenceInputError,
    MMVimDetInferencer,
    MMVimSegInferencer,
    build_inferencer,
    config_dataset_meta,
    list_image_inputs,
)

__all__ = ['build_inferencer', 'MMVimSegInferencer', 'MMVimDetInferencer',
           'config_dataset_meta', 'list_image_inputs', 'InferenceInputError']
