from .io import load_checkpoint_file

__all__ = ['load_checkpoint_file']
