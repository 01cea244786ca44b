from .common import (
    CheckpointFileError,
    CheckpointMismatchError,
    ConversionReport,
    UnsafeCheckpointError,
    extract_state_dict,
)
from .io import (
    TRUST_ENV,
    add_trust_flag,
    apply_trust_flag,
    checkpoint_file_problem,
    load_checkpoint_file,
    trust_checkpoints,
)
from .mambavision import (
    convert_mambavision,
    convert_mambavision_checkpoint,
    convert_mambavision_file,
    load_mambavision_pretrained,
)
from .vim import (
    convert_vim,
    convert_vim_checkpoint,
    convert_vim_file,
    load_vim_pretrained,
)
from .vmamba import (
    convert_vmamba,
    convert_vmamba_checkpoint,
    convert_vmamba_file,
    load_vmamba_pretrained,
)

__all__ = ['load_checkpoint_file', 'checkpoint_file_problem',
           'CheckpointFileError', 'CheckpointMismatchError',
           'UnsafeCheckpointError', 'TRUST_ENV',
           'trust_checkpoints', 'add_trust_flag', 'apply_trust_flag',
           'ConversionReport', 'extract_state_dict', 'convert_vim',
           'convert_vim_checkpoint', 'convert_vim_file',
           'load_vim_pretrained', 'convert_vmamba', 'convert_vmamba_checkpoint',
           'convert_vmamba_file', 'load_vmamba_pretrained',
           'convert_mambavision', 'convert_mambavision_checkpoint',
           'convert_mambavision_file', 'load_mambavision_pretrained']
