"""Small helpers shared across mmvim."""
import warnings

_warned: set = set()


def warn_once(key: str, message: str, stacklevel: int = 3) -> None:
    """Emit ``message`` as a UserWarning once per process for ``key``."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=stacklevel)
