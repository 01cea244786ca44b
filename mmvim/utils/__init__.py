from .run import (
                  MMVimConfigError,
                  add_runner_args,
                  apply_runner_args,
                  build_model,
                  build_runner,
                  check_dataset_paths,
                  check_pretrained_paths,
                  finish_distributed,
                  load_config,
                  model_registry,
                  syncbn_to_bn,
)

__all__ = ['load_config', 'check_dataset_paths', 'check_pretrained_paths',
           'build_runner', 'finish_distributed', 'build_model',
           'syncbn_to_bn', 'model_registry',
           'MMVimConfigError', 'add_runner_args', 'apply_runner_args']
