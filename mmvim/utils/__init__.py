from .run import (
                  MMVimConfigError,
                  build_runner,
                  check_dataset_paths,
                  load_config,
)

__all__ = ['load_config', 'check_dataset_paths', 'build_runner',
           'MMVimConfigError']
