"""Small helpers shared across mmvim."""
import warnings

_warned: set = set()


def warn_once(key: str, message: str, stacklevel: int = 3) -> None:
    """Emit ``message`` as a UserWarning once per process for ``key``."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=stacklevel)


def is_exporting() -> bool:
    """True while torch.export or torch.onnx.export traces a model (code
    that takes a shortcut for particular shapes must not take it then: the
    graph would keep the shortcut for every input shape)."""
    import torch
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and getattr(compiler, 'is_exporting',
                                        lambda: False)():
        return True
    onnx = getattr(torch, 'onnx', None)
    return bool(onnx is not None and onnx.is_in_onnx_export())
