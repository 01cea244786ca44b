"""The mmengine Runner, loading whole-model checkpoints through mmvim.

mmengine's ``Runner.load_checkpoint`` (used for ``load_from``, ``--resume``
and ``tools/test.py``) loads with ``strict=False``: keys that do not fit are
skipped with a log line and the test runs on partly random weights. The
official dense releases also name their backbone differently from how a
fresh mmvim model would if its layout ever changed. :class:`MMVimRunner`
loads through :func:`mmvim.checkpoint.dense.load_model_checkpoint` instead:
the ``backbone.`` part is converted by the backbone's family converter, the
heads load unchanged, and with ``strict_load`` (``tools/test.py``) every key
must fit or the run stops naming the keys. It also logs mmvim's environment
report (:mod:`mmvim.env`) after mmengine's environment block.
"""
from __future__ import annotations

from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checkpoint.dense import load_model_checkpoint


@RUNNERS.register_module()
class MMVimRunner(Runner):
    """:class:`mmengine.runner.Runner` whose checkpoint loading converts
    official dense releases and can be strict (``strict_load``)."""

    #: strict loading for ``load_from``/resume (tools/test.py sets it); when
    #: False, keys that fit are loaded and the others are logged as warnings
    strict_load: bool = False

    def _log_env(self, env_cfg: dict) -> None:
        """mmengine's environment block, then mmvim's (``python -m
        mmvim.env``: versions, devices, usable kernel backends)."""
        super()._log_env(env_cfg)
        from ..env import env_report
        self.logger.info(env_report())

    def load_checkpoint(self, filename: str, map_location='cpu',
                        strict: bool = False, revise_keys=None):
        from mmengine.runner.checkpoint import _load_checkpoint
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        # hooks may rewrite the checkpoint before it is loaded (e.g. EMA)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) \
            else self.model
        if not hasattr(model, 'backbone') and hasattr(model, 'module'):
            model = model.module  # a test-time-augmentation wrapper
        load_model_checkpoint(model, filename,
                              strict=strict or self.strict_load,
                              checkpoint=checkpoint, logger=self.logger)
        self._has_loaded = True
        return checkpoint
