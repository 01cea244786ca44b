"""One registration point for mmseg AND mmdet.

Every mmvim module is registered in both downstream registries, so the same
backbone class serves ``default_scope='mmseg'`` and ``default_scope='mmdet'``
configs. Use :func:`register_model` / :func:`register_dataset` instead of a
single registry's ``register_module``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, TypeVar

from mmdet.registry import DATASETS as MMDET_DATASETS
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.registry import (
    OPTIM_WRAPPER_CONSTRUCTORS as MMDET_OPTIM_WRAPPER_CONSTRUCTORS,
)
from mmseg.registry import DATASETS as MMSEG_DATASETS
from mmseg.registry import MODELS as MMSEG_MODELS
from mmseg.registry import (
    OPTIM_WRAPPER_CONSTRUCTORS as MMSEG_OPTIM_WRAPPER_CONSTRUCTORS,
)

T = TypeVar('T', bound=type)

MODEL_REGISTRIES = (MMSEG_MODELS, MMDET_MODELS)
DATASET_REGISTRIES = (MMSEG_DATASETS, MMDET_DATASETS)
OPTIM_CONSTRUCTOR_REGISTRIES = (MMSEG_OPTIM_WRAPPER_CONSTRUCTORS,
                                MMDET_OPTIM_WRAPPER_CONSTRUCTORS)


def _register_in(registries: Sequence, name: Optional[str] = None
                 ) -> Callable[[T], T]:
    def wrap(cls: T) -> T:
        for registry in registries:
            registry.register_module(name=name, module=cls)
        return cls
    return wrap


def register_model(name: Optional[str] = None) -> Callable[[T], T]:
    """Class decorator: register in mmseg's and mmdet's MODELS."""
    return _register_in(MODEL_REGISTRIES, name)


def register_dataset(name: Optional[str] = None) -> Callable[[T], T]:
    """Class decorator: register in mmseg's and mmdet's DATASETS."""
    return _register_in(DATASET_REGISTRIES, name)


def register_optim_constructor(name: Optional[str] = None
                               ) -> Callable[[T], T]:
    """Class decorator: register an optimizer wrapper constructor in both."""
    return _register_in(OPTIM_CONSTRUCTOR_REGISTRIES, name)
