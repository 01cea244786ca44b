from .vim import Vim

__all__ = ['Vim']
