"""Checkpoint files cannot run code, crash, hang or touch the disk: every
place mmvim reads one (the loader mmengine calls, ``init_cfg=dict(type=
'Pretrained')``, the runner's ``load_from`` / ``--resume``, the
inferencers, tools/test.py, train.py, infer.py, convert_checkpoint.py and
erf.py) reads it with torch's weights-only unpickler and mmvim's stand-ins,
after checking the file's structure, and refuses a hostile file with one
line naming the file and what it wanted; ``MMVIM_TRUST_CHECKPOINTS=1`` is
the explicit opt-in. The metadata real releases and runs carry (argparse
Namespace, a yacs CfgNode without yacs installed, numpy values, mmengine's
resume state) loads as data with the weights bit for bit."""
import argparse
import collections
import copyreg
import functools
import importlib.util
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e import DET_CONFIG, SEG_CONFIG, loader_settings, tool_env, write_config

from mmvim.checkpoint import (
    TRUST_ENV,
    CheckpointFileError,
    UnsafeCheckpointError,
    load_checkpoint_file,
)
from mmvim.models import MambaVision, Vim, VMamba

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# hostile files
# ---------------------------------------------------------------------------
class Call:
    """Pickles as ``func(*args)``: what a hostile file's ``__reduce__``
    does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _name(func) -> str:
    return f'{func.__module__}.{func.__name__}'


def payloads(marker: Path) -> dict:
    """Objects whose unpickling creates ``marker`` (or would reach a
    callable that can), by the global a loader must refuse."""
    make = f'open({str(marker)!r}, "w").close()'
    return {
        'os.system': (Call(os.system, f'touch {marker}'), _name(os.system)),
        'builtins.exec': (Call(exec, make), 'builtins.exec'),
        'builtins.eval': (Call(eval, make), 'builtins.eval'),
        'builtins.open': (Call(open, str(marker), 'w'), _name(open)),
        # protocol 2 writes it under Python 2's name, commands.Popen
        'subprocess.Popen': (Call(subprocess.Popen, ['touch', str(marker)]),
                             '.Popen'),
        'functools.partial': (Call(functools.partial(
            os.system, f'touch {marker}')), 'functools.partial'),
        # an allowed torch function handed a callable to call
        'rebuild_from_type': (Call(torch._tensor._rebuild_from_type_v2,
                                   os.system, torch.Tensor,
                                   (f'touch {marker}', ), {}),
                              _name(os.system)),
        # copyreg._reconstructor(cls, base, state) calls base.__init__
        'reconstructor': (Call(copyreg._reconstructor, subprocess.Popen,
                               subprocess.Popen, ['touch', str(marker)]),
                          'copyreg._reconstructor'),
    }


def torch_bytes(obj, zipped: bool = True) -> bytes:
    """``obj`` as torch.save writes it (zip or legacy format)."""
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zipped)
    return buf.getvalue()


def with_pickle(data_pkl: bytes, compress=zipfile.ZIP_STORED) -> bytes:
    """A torch zip file whose ``data.pkl`` is ``data_pkl``."""
    src = zipfile.ZipFile(io.BytesIO(torch_bytes({'w': torch.ones(2)})))
    out = io.BytesIO()
    with zipfile.ZipFile(out, 'w') as archive:
        for info in src.infolist():
            pkl = info.filename.endswith('/data.pkl')
            archive.writestr(info.filename,
                             data_pkl if pkl else src.read(info),
                             compress_type=compress if pkl else
                             zipfile.ZIP_STORED)
    return out.getvalue()


def unicode(text: str) -> bytes:
    """Pickle's BINUNICODE of ``text``."""
    data = text.encode()
    return b'X' + struct.pack('<I', len(data)) + data


def keyword_constructor(cls: str, args: bytes, key: str) -> bytes:
    """``cls.__new__(cls, *args, **{key: 0x41414141})`` (pickle's
    NEWOBJ_EX): a storage's allocator or a tensor's cdata, an address the
    file chose (a full unpickle dies of SIGSEGV)."""
    return with_pickle(b'\x80\x02c' + cls.encode() + b'\n' + args + b'}' +
                       unicode(key) + b'J\x41\x41\x41\x41s\x92.')


class ForgedDType:
    """A numpy dtype rebuilt with a BUILD state that declares an object
    field while its flags say it holds none."""

    def __init__(self, spec: str):
        self.spec = spec

    def __reduce__(self):
        return (np.dtype, (self.spec, False, True),
                (3, '|', None, ('f0', ), {'f0': (np.dtype('O'), 0)}, 8, 1,
                 0))


def forged_scalar(spec: str) -> bytes:
    """``numpy scalar(forged dtype, 8 bytes)``: an object pointer the file
    chose, handed to a call a loader refuses (whose message shows it: a
    repr that follows the pointer)."""
    from numpy._core.multiarray import scalar
    forged = Call(scalar, ForgedDType(spec), b'AAAAAAAA')
    return with_pickle(pickle.dumps({'x': Call(getattr, 'x', forged)},
                                    protocol=2))


def tar_archive(victim: str, fifo: bool) -> bytes:
    """torch's legacy tar format: a first member whose name starts with
    0x80 (the pickle magic), then ``storages`` as a hard link to
    ``victim`` or as a FIFO."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode='w', format=tarfile.GNU_FORMAT,
                      encoding='latin-1') as tar:
        tar.addfile(tarfile.TarInfo('\x80\x02'))
        member = tarfile.TarInfo('storages')
        if fifo:
            member.type = tarfile.FIFOTYPE
        else:
            member.type, member.linkname = tarfile.LNKTYPE, victim
        member.mode, member.mtime = 0o777, 0
        tar.addfile(member)
    return out.getvalue()


def deflate_bomb(size: int = 64 << 20) -> bytes:
    """A ``data.pkl`` of ``size`` bytes (one bytes object), deflated to
    about a thousandth of that."""
    return with_pickle(b'\x80\x02B' + struct.pack('<I', size) +
                       bytes(size) + b'.', zipfile.ZIP_DEFLATED)


def legacy_oversized() -> bytes:
    """A legacy-format file whose pickle declares 2**30 floats for a
    storage of 4."""
    data = torch_bytes({'w': torch.ones(4)}, zipped=False)
    assert data.count(b'K\x04N') == 1
    return data.replace(b'K\x04N', b'J\x00\x00\x00\x40N')


def out_of_range_sparse() -> bytes:
    t = torch.sparse_coo_tensor(torch.tensor([[1 << 40]]), torch.ones(1),
                                (2, ), check_invariants=False)
    return torch_bytes({'state_dict': {'w': t}})


# name -> (builder(victim path) -> bytes, what the refusal line says)
HOSTILE = {
    'allocator keyword': (lambda _: keyword_constructor(
        'torch.storage\nUntypedStorage', b'K\x10\x85', 'allocator'),
        'NEWOBJ_EX'),
    'cdata keyword': (
        lambda _: keyword_constructor('torch\nTensor', b')', 'cdata'),
        'NEWOBJ_EX'),
    'forged dtype state': (lambda _: forged_scalar('f8'), 'numpy dtype'),
    'forged void dtype': (lambda _: forged_scalar('V8'), 'numpy dtype'),
    'tar hard link': (lambda victim: tar_archive(victim, fifo=False),
                      'tar archive'),
    'tar fifo': (lambda victim: tar_archive(victim, fifo=True),
                 'tar archive'),
    'deflate bomb': (lambda _: deflate_bomb(), 'compressed record'),
    'stride-0 view': (lambda _: torch_bytes(
        {'state_dict': {'w': torch.ones(1).expand(1 << 28)}}),
        'repeats its storage'),
    'oversized legacy storage': (lambda _: legacy_oversized(),
                                 'bytes of tensor storage'),
    'out-of-range sparse': (lambda _: out_of_range_sparse(),
                            'sparse tensor'),
}


def save(obj, path: Path, fmt: str = 'zip') -> str:
    """``obj`` as torch's zip file, torch's legacy format or a bare
    pickle."""
    if fmt == 'pickle':
        with open(path, 'wb') as f:
            pickle.dump(obj, f, protocol=2)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == 'zip')
    return str(path)


def refused(path, what: str, call=load_checkpoint_file) -> str:
    """``call(path)`` raises the one-line refusal naming the file and
    ``what`` it wanted; returns the message."""
    with pytest.raises(UnsafeCheckpointError) as err:
        call(path)
    message = str(err.value)
    assert '\n' not in message and str(path) in message, message
    assert what in message and TRUST_ENV in message, message
    return message


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
@pytest.mark.parametrize('kind', list(payloads(Path('m'))))
def test_a_file_that_wants_to_run_code_is_refused(tmp_path, kind, fmt):
    marker = tmp_path / 'MARKER'
    obj, name = payloads(marker)[kind]
    path = save({'state_dict': {'w': torch.ones(2)}, 'meta': {'x': obj}},
                tmp_path / 'evil.pth', fmt)
    refused(path, name)
    assert not marker.exists()


def test_a_bare_pickle_is_not_a_checkpoint(tmp_path):
    """torch.load reads torch.save's formats only; a bare pickle (even of
    a state dict) is refused from its structure, before anything in it is
    built."""
    marker = tmp_path / 'MARKER'
    path = save({'w': torch.ones(2), 'x': payloads(marker)['os.system'][0]},
                tmp_path / 'bare.pth', 'pickle')
    with pytest.raises(CheckpointFileError, match='torch.save did not'):
        load_checkpoint_file(path)
    assert not marker.exists()


# Hand-written pickles (protocol 2: GLOBAL 'c', MARK '(', TUPLE 't', REDUCE
# 'R', BUILD 'b', SETITEM 's', NEWOBJ 0x81) that try to reach a callable
# through allowed globals or stand-ins, in torch's zip format.
HB = b'cmmengine.logging.history_buffer\nHistoryBuffer\n'
GADGETS = {
    # getattr(object, '__subclasses__')() -> every class in the process
    'getattr': (b'cbuiltins\ngetattr\n(cbuiltins\nobject\n' +
                unicode('__subclasses__') + b'tR)R.', 'builtins.object'),
    # getattr on a class the stand-ins know, for a name they do not
    'getattr HistoryBuffer': (b'c__builtin__\ngetattr\n(' + HB +
                              unicode('register_statistics') + b'tR.',
                              'register_statistics'),
    # BUILD on a class: would replace argparse.Namespace.__eq__
    'BUILD on a class': (b'cargparse\nNamespace\n(N}' + unicode('__eq__') +
                         b'cbuiltins\nprint\nstb.', 'builtins.print'),
    'BUILD on a class, allowed value': (
        b'cargparse\nNamespace\n}' + unicode('__eq__') + b'K\x01sb.',
        'build'),
    # INST: protocol 0's call, with the global in its argument
    'INST': (b'(' + unicode('touch /nonexistent/x') + b'iposix\nsystem\n.',
             'INST'),
    # calling a class that may only be named (numpy.ndarray(...))
    'call a named class': (b'cnumpy\nndarray\n(K\x02tR.', 'numpy.ndarray'),
    # renaming HistoryBuffer's statistics (a dict of the class, shared by
    # the whole process)
    'rename a statistic': (
        HB + b')\x81}' + unicode('statistics_methods') + b'}' +
        unicode('mean') + b'c__builtin__\ngetattr\n(' + HB +
        unicode('max') + b'tRssb.', 'rename HistoryBuffer statistics'),
}


@pytest.mark.parametrize('kind', list(GADGETS))
def test_allowed_globals_do_not_reach_other_callables(tmp_path, kind):
    from mmengine.logging import HistoryBuffer
    data, what = GADGETS[kind]
    eq = argparse.Namespace.__eq__
    methods = dict(HistoryBuffer._statistics_methods)
    path = tmp_path / 'gadget.pth'
    path.write_bytes(with_pickle(b'\x80\x02' + data))
    refused(str(path), what)
    assert argparse.Namespace.__eq__ is eq
    assert HistoryBuffer._statistics_methods == methods


def test_the_opt_in_loads_with_a_full_unpickle(tmp_path, monkeypatch):
    """MMVIM_TRUST_CHECKPOINTS=1 is the user's explicit choice: the file's
    code runs (here: it creates the marker)."""
    marker = tmp_path / 'MARKER'
    obj, _ = payloads(marker)['builtins.open']
    path = save({'state_dict': {'w': torch.ones(2)}, 'x': obj},
                tmp_path / 'evil.pth')
    monkeypatch.setenv(TRUST_ENV, '1')
    out = load_checkpoint_file(path)
    assert marker.exists() and torch.equal(out['state_dict']['w'],
                                           torch.ones(2))


def test_torchscript_archives_and_damaged_zips_are_named(tmp_path):
    """torch.load would run a TorchScript archive's code (torch.jit.load);
    a zip whose index is damaged gets one line, not zipfile's traceback."""
    path = tmp_path / 'scripted.pth'
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointFileError, match='TorchScript archive'):
        load_checkpoint_file(str(path))
    data = bytearray(Path(save({'w': torch.ones(2)},
                               tmp_path / 'd.pth')).read_bytes())
    entry = data.find(b'PK\x01\x02')  # the first central directory entry
    data[entry + 46:entry + 56] = b'\xff' * 10  # its file name
    (tmp_path / 'd.pth').write_bytes(bytes(data))
    with pytest.raises(CheckpointFileError, match='damaged zip archive'):
        load_checkpoint_file(str(tmp_path / 'd.pth'))


# ---------------------------------------------------------------------------
# metadata that loads as data
# ---------------------------------------------------------------------------
# A stand-in for yacs.config.CfgNode with the layout VMamba's checkpoints
# pickle: a dict subclass whose __init__ keeps its flags in __dict__.
FAKE_YACS = '''
class CfgNode(dict):
    def __init__(self, init_dict=None, new_allowed=False):
        init_dict = dict(init_dict or {})
        for key, value in init_dict.items():
            if type(value) is dict:
                init_dict[key] = CfgNode(value)
        super().__init__(init_dict)
        self.__dict__['__immutable__'] = False
        self.__dict__['__deprecated_keys__'] = set()
        self.__dict__['__renamed_keys__'] = {}
        self.__dict__['__new_allowed__'] = new_allowed

    def __getattr__(self, name):
        if name in self:
            return self[name]
        raise AttributeError(name)

    def freeze(self):
        self.__dict__['__immutable__'] = True
        for value in self.values():
            if isinstance(value, CfgNode):
                value.freeze()
'''

# Adds a frozen yacs CfgNode under 'config' (VMamba's training script) to
# each file given (at the top level, or in 'meta'), keeping its format, in a
# process that has the fake yacs on its path.
ADD_CFGNODE = '''
import sys
import torch
from yacs.config import CfgNode
for path in sys.argv[1:]:
    ckpt = torch.load(path, weights_only=False)
    cfg = CfgNode({'MODEL': {'TYPE': 'vssm', 'NAME': 'vssm1_tiny',
                             'VSSM': {'DEPTHS': [2, 2, 8, 2]}},
                   'TRAIN': {'EPOCHS': 300, 'BASE_LR': 0.001}})
    cfg.freeze()
    (ckpt['meta'] if 'meta' in ckpt else ckpt)['config'] = cfg
    with open(path, 'rb') as f:
        zipped = f.read(2) == b'PK'
    torch.save(ckpt, path, _use_new_zipfile_serialization=zipped)
'''


def add_cfgnode(tmp: Path, *paths: str) -> None:
    """Pickle a yacs CfgNode into ``paths`` in another process (this one
    never imports yacs)."""
    fake = tmp / 'fake_yacs'
    (fake / 'yacs').mkdir(parents=True, exist_ok=True)
    (fake / 'yacs' / '__init__.py').write_text('')
    (fake / 'yacs' / 'config.py').write_text(FAKE_YACS)
    env = dict(os.environ, PYTHONPATH=str(fake))
    proc = subprocess.run([sys.executable, '-c', ADD_CFGNODE, *paths],
                          capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def numpy_1_pickle(path: str) -> None:
    """Rewrite a legacy-format file as numpy 1.x writes it
    (``numpy.core.multiarray``)."""
    data = Path(path).read_bytes()
    assert data.count(b'numpy._core.multiarray\n') >= 2
    Path(path).write_bytes(data.replace(b'numpy._core.multiarray\n',
                                        b'numpy.core.multiarray\n'))


def release_metadata() -> dict:
    """What Vim/DeiT/MambaVision/timm training scripts save besides the
    weights."""
    return dict(
        args=argparse.Namespace(model='vim_tiny', lr=5e-4, drop_path=0.05,
                                input_size=224, output_dir=None),
        epoch=299, max_accuracy=np.float64(76.1),
        metric=np.float32(75.5), top5=np.array([92.5, 93.0]),
        optimizer={'state': {}, 'param_groups': [
            {'lr': 1e-6, 'betas': (0.9, 0.999), 'params': [0, 1]}]},
        lr_scheduler=collections.OrderedDict(last_epoch=np.int64(299)),
        scaler={'scale': 65536.0, '_growth_tracker': 0})


def check_release_metadata(meta: dict) -> None:
    expected = release_metadata()
    assert meta['args'] == expected['args']
    assert type(meta['max_accuracy']) is np.float64
    assert meta['max_accuracy'] == expected['max_accuracy']
    assert meta['metric'].dtype == np.float32
    assert np.array_equal(meta['top5'], expected['top5'])
    assert meta['lr_scheduler'] == expected['lr_scheduler']
    assert meta['optimizer'] == expected['optimizer']
    cfg = meta['config']  # a yacs CfgNode: an OrderedDict, flags kept
    assert type(cfg) is collections.OrderedDict
    assert type(cfg['MODEL']['VSSM']) is collections.OrderedDict
    assert cfg['MODEL']['VSSM']['DEPTHS'] == [2, 2, 8, 2]
    assert cfg['TRAIN'] == {'EPOCHS': 300, 'BASE_LR': 0.001}
    assert vars(cfg)['__immutable__'] is True
    assert 'yacs' not in sys.modules


def same_weights(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), \
            key


def tiny_backbones() -> dict:
    """A small backbone of each family and its official-layout state dict
    (what a release file holds under 'model' / 'state_dict')."""
    torch.manual_seed(0)
    vim = Vim('tiny', embed_dims=32, depth=2, img_size=64)
    vmamba = VMamba('tiny', dims=16, depths=(1, 1, 1, 1))
    mv = MambaVision('T', dim=16, in_dim=8, depths=(1, 1, 1, 1),
                     num_heads=(1, 2, 2, 4), window_size=(4, 4, 4, 2))
    release = {}
    for name, model in (('vim', vim), ('vmamba', vmamba),
                        ('mambavision', mv)):
        sd = {k: torch.randn_like(v) if v.is_floating_point() else v
              for k, v in model.state_dict().items()
              if not k.startswith('outnorm')}
        release[name] = (model, sd)
    return release


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Release files of each backbone family and whole-model checkpoints of
    the demo configs, all carrying Namespace / CfgNode / numpy metadata
    (the CfgNode pickled by another process), and the same files with a
    payload that creates ``MARKER``."""
    from mmvim.utils import build_model, load_config
    tmp = tmp_path_factory.mktemp('safety')
    out = {'tmp': tmp, 'marker': tmp / 'MARKER'}
    meta_files = []
    for name, (model, sd) in tiny_backbones().items():
        key = 'state_dict' if name == 'mambavision' else 'model'
        out[f'{name}_sd'] = sd
        out[f'{name}_model'] = model
        out[name] = save(dict(release_metadata(), **{key: sd}),
                         tmp / f'{name}_release.pth',
                         'legacy' if name == 'vmamba' else 'zip')
        meta_files.append(out[name])
    for name, config in (('seg', SEG_CONFIG), ('det', DET_CONFIG)):
        torch.manual_seed(0)
        sd = build_model(load_config(str(config))).state_dict()
        out[f'{name}_sd'] = sd
        out[name] = save({'state_dict': sd, 'meta': release_metadata()},
                         tmp / f'{name}_whole.pth')
        meta_files.append(out[name])
    add_cfgnode(tmp, *meta_files)
    numpy_1_pickle(out['vmamba'])
    evil = payloads(out['marker'])['os.system'][0]
    for name in ('vim', 'vmamba', 'mambavision', 'seg', 'det'):
        ckpt = load_checkpoint_file(out[name])
        ckpt['evil'] = evil
        out[f'evil_{name}'] = save(ckpt, tmp / f'evil_{name}.pth')
    # without the CfgNode, which a full unpickle cannot open without yacs
    out['evil_plain_seg'] = save({'state_dict': out['seg_sd'], 'evil': evil},
                                 tmp / 'evil_plain_seg.pth')
    return out


@pytest.fixture
def no_marker(files):
    """The marker must not exist after the test."""
    yield files['marker']
    assert not files['marker'].exists(), 'a payload was run'


def test_release_metadata_loads_as_data(files, tmp_path):
    """Namespace, numpy (2.x names; 1.x names in the VMamba file) and a
    CfgNode of a module that is not installed, in zip and legacy files."""
    for name, key in (('vim', 'model'), ('vmamba', 'model'),
                      ('mambavision', 'state_dict'), ('seg', 'state_dict')):
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            ckpt = load_checkpoint_file(files[name])
        same_weights(ckpt[key], files[f'{name}_sd'])
        check_release_metadata(ckpt.get('meta', ckpt))
    # saved again (e.g. by a tool that keeps the meta), it loads back
    again = save(ckpt, tmp_path / 'again.pth')
    check_release_metadata(load_checkpoint_file(again)['meta'])


def test_mmengine_objects_load_as_themselves(tmp_path):
    """mmengine's Config, ConfigDict, MessageHub and HistoryBuffer (with
    numpy histories) come back as those classes with their contents."""
    from mmengine.config import Config, ConfigDict
    from mmengine.logging import HistoryBuffer, MessageHub
    hub = MessageHub('safety-test')
    for loss in (3.0, 2.0, 1.5):
        hub.update_scalar('train/loss', loss)
    hub.update_info('eta', np.float64(12.5))
    cfg = Config(dict(model=dict(type='Vim', depth=2), lr=0.1))
    path = save({'state_dict': {'w': torch.ones(2)}, 'hub': hub,
                 'cfg': cfg, 'sub': ConfigDict(a=dict(b=[1, 2])),
                 'hub_state': hub.state_dict()}, tmp_path / 'mm.pth')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        out = load_checkpoint_file(path)
    assert type(out['hub']) is MessageHub
    buf = out['hub'].get_scalar('train/loss')
    assert type(buf) is HistoryBuffer
    assert buf.mean() == pytest.approx(6.5 / 3) and buf.current() == 1.5
    assert type(buf.data[0]) is np.ndarray
    assert out['hub'].get_info('eta') == 12.5
    assert type(out['cfg']) is Config and out['cfg'].model.depth == 2
    assert out['cfg'].to_dict() == cfg.to_dict()
    assert type(out['sub']) is ConfigDict and out['sub'].a.b == [1, 2]
    restored = MessageHub('safety-test-restored')
    restored.load_state_dict(out['hub_state'])
    assert restored.get_scalar('train/loss').mean() == buf.mean()


def test_the_opt_in_still_opens_classes_of_absent_modules(files,
                                                          monkeypatch):
    """With MMVIM_TRUST_CHECKPOINTS=1 a file whose full unpickle needs a
    module that is not installed (yacs) still loads, through the
    stand-ins."""
    monkeypatch.setenv(TRUST_ENV, '1')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ckpt = load_checkpoint_file(files['vmamba'])
    same_weights(ckpt['model'], files['vmamba_sd'])
    check_release_metadata(ckpt)


def test_mmengine_loader_and_urls_load_safely(files, no_marker):
    """mmengine's CheckpointLoader (local paths, http(s) through the torch
    hub cache) is mmvim's loader."""
    from mmengine.runner import CheckpointLoader

    from mmvim.checkpoint.io import load_url_checkpoint, url_cache_path
    ckpt = CheckpointLoader.load_checkpoint(files['seg'], map_location='cpu')
    same_weights(ckpt['state_dict'], files['seg_sd'])
    refused(files['evil_seg'], 'system', CheckpointLoader.load_checkpoint)
    cache = files['tmp'] / 'hub'
    url = 'https://example.invalid/releases/evil_seg.pth'
    os.makedirs(cache, exist_ok=True)
    os.link(files['evil_seg'], url_cache_path(url, str(cache)))
    refused(url_cache_path(url, str(cache)), 'system',
            lambda _: load_url_checkpoint(url, model_dir=str(cache)))


@pytest.mark.parametrize('family', ['vim', 'vmamba', 'mambavision'])
def test_pretrained_init_cfg(files, family, no_marker):
    """init_cfg=dict(type='Pretrained') of each family: the release with
    metadata fills the backbone bit for bit; the hostile one is refused."""
    model = files[f'{family}_model']
    model.init_cfg = dict(type='Pretrained', checkpoint=files[family])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model.init_weights()
    sd = files[f'{family}_sd']
    for key, value in model.state_dict().items():
        if key in sd:
            assert torch.equal(value, sd[key]), key
    model.init_cfg = dict(type='Pretrained',
                          checkpoint=files[f'evil_{family}'])
    refused(files[f'evil_{family}'], 'system', lambda _: model.init_weights())


def convert_tool():
    spec = importlib.util.spec_from_file_location(
        'convert_tool', ROOT / 'tools' / 'convert_checkpoint.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_checkpoint_tool(files, tmp_path, capsys, monkeypatch,
                                 no_marker):
    """tools/convert_checkpoint.py: the VMamba release with its CfgNode
    converts, and mmvim's output loads with no warning; hostile files exit
    2 with one line (a backbone release, and a whole model with
    --config)."""
    tool = convert_tool()
    dst = tmp_path / 'vmamba_converted.pth'

    def main(*argv):
        monkeypatch.setattr(sys, 'argv', ['convert_checkpoint.py', *argv])
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return tool.main()

    assert main('vmamba', files['vmamba'], str(dst)) == 0
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        converted = load_checkpoint_file(str(dst))
    for key, value in files['vmamba_sd'].items():
        assert torch.equal(converted['state_dict'][key], value), key
    capsys.readouterr()
    assert main('vmamba', files['evil_vmamba'], str(tmp_path / 'x.pth')) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error:') and '\n' not in err
    assert files['evil_vmamba'] in err and 'system' in err
    assert main('vim', files['evil_seg'], str(tmp_path / 'y.pth'),
                '--config', str(SEG_CONFIG)) == 2
    err = capsys.readouterr().err.strip()
    assert files['evil_seg'] in err and TRUST_ENV in err
    assert not (tmp_path / 'x.pth').exists()


def test_erf_weights(files, no_marker):
    spec = importlib.util.spec_from_file_location('erf_tool',
                                                  ROOT / 'tools' / 'erf.py')
    erf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(erf)
    model = files['vim_model']
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        erf.load_weights(model, files['vim'])
    for key, value in files['vim_sd'].items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(erf.ERFError, match='wants to call') as err:
        erf.load_weights(model, files['evil_vim'])
    assert files['evil_vim'] in str(err.value)


@pytest.mark.parametrize('task', ['seg', 'det'])
def test_inferencers(files, task, no_marker):
    from mmvim.apis import MMVimDetInferencer, MMVimSegInferencer
    cls = MMVimSegInferencer if task == 'seg' else MMVimDetInferencer
    config = str(SEG_CONFIG if task == 'seg' else DET_CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        inferencer = cls(config, files[task], device='cpu')
    same_weights(inferencer.model.state_dict(), files[f'{task}_sd'])
    refused(files[f'evil_{task}'], 'system',
            lambda path: cls(config, path, device='cpu'))


def test_runner_load_from_and_resume(files, no_marker):
    """The runner's load_from (tools/test.py, train.py) and --resume: the
    whole-model file with metadata loads strictly, bit for bit; the hostile
    one is refused before anything else happens."""
    from mmvim.engine import MMVimRunner
    from mmvim.utils import build_model, load_config
    model = build_model(load_config(str(SEG_CONFIG)))
    runner = MMVimRunner(model=model, work_dir=str(files['tmp'] / 'runner'),
                         default_scope='mmseg')
    runner.strict_load = True
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        runner.load_checkpoint(files['seg'])
    same_weights(model.state_dict(), files['seg_sd'])
    refused(files['evil_seg'], 'system', runner.load_checkpoint)
    refused(files['evil_seg'], 'system', runner.resume)


# ---------------------------------------------------------------------------
# the tools, as a user runs them
# ---------------------------------------------------------------------------
def run_together(*commands) -> list:
    """Run the tool ``commands`` at the same time (each pays Python's and
    the toolboxes' start-up) from the repository root; their results in
    order."""
    procs = [subprocess.Popen(
        [sys.executable if c == 'python' else str(c) for c in cmd],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=tool_env()) for cmd in commands]
    results = []
    for cmd, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(cmd, proc.returncode,
                                                   out, err))
    return results


def one_line_error(proc, path) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('error')]
    assert len(errors) == 1 and str(path) in errors[0], proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope='module')
def seg_config(files):
    from mmvim.datasets import make_demo_segmentation
    data = make_demo_segmentation(str(files['tmp'] / 'data'), 2, 2, 64)
    return write_config(files['tmp'] / 'seg.py', SEG_CONFIG,
                        loader_settings(data, 2))


def check_refusals(procs, evil) -> None:
    for proc in procs:
        line = one_line_error(proc, evil)
        assert _name(os.system) in line, line
        assert TRUST_ENV in line and '--trust-checkpoint' in line


def test_test_tool_refuses_a_file_that_wants_to_run_code(files, seg_config,
                                                         tmp_path):
    """tools/test.py: exit 2, one line naming the file and the global,
    nothing run. With --trust-checkpoint it runs the file's code (the
    marker appears) and evaluates."""
    marker = tmp_path / 'MARKER'
    trusted = save({'state_dict': files['seg_sd'],
                    'evil': payloads(marker)['os.system'][0]},
                   tmp_path / 'trusted.pth')
    refusal, trusting = run_together(
        ('python', 'tools/test.py', seg_config, files['evil_seg'],
         '--work-dir', tmp_path / 'w1'),
        ('python', 'tools/test.py', seg_config, trusted, '--work-dir',
         tmp_path / 'w2', '--trust-checkpoint'))
    check_refusals([refusal], files['evil_seg'])
    assert not files['marker'].exists()
    assert trusting.returncode == 0, trusting.stderr[-3000:]
    assert 'Test metrics' in trusting.stdout and marker.exists()


@pytest.mark.slow
def test_train_and_infer_tools_refuse_a_file_that_wants_to_run_code(
        files, seg_config, tmp_path):
    """tools/train.py --resume and load_from, tools/infer.py: exit 2, one
    line naming the file and the global, nothing run."""
    evil = files['evil_seg']
    images = files['tmp'] / 'data' / 'images' / 'validation'
    procs = run_together(
        ('python', 'tools/train.py', seg_config, '--resume', evil,
         '--work-dir', tmp_path / 'w1'),
        ('python', 'tools/train.py', seg_config, '--work-dir',
         tmp_path / 'w2', '--cfg-options', f'load_from={evil}'),
        ('python', 'tools/infer.py', seg_config, evil, images, '--out-dir',
         tmp_path / 'infer'))
    check_refusals(procs, evil)
    assert not files['marker'].exists()


# Runs one command and reaps it with os.wait4, writing its exit code, CPU
# seconds and peak resident memory as JSON to argv[1]. It runs in a fresh,
# small interpreter because a child's ru_maxrss starts from its parent's
# resident set at fork: a tool started straight from a pytest worker would
# report at least the worker's memory, not its own.
MEASURE = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], 'w') as f:
    json.dump(dict(returncode=os.waitstatus_to_exitcode(status),
                   cpu=usage.ru_utime + usage.ru_stime,
                   peak=usage.ru_maxrss * 1024), f)
"""


def run_measured(commands, out_dir: Path, timeout: float = 120) -> list:
    """Start the tool ``commands`` together from the repository root, each
    under :data:`MEASURE`: its exit code (negative: killed by that signal,
    e.g. -11 for a segfault; None: still running after ``timeout`` s, then
    killed), stderr, wall and CPU seconds and peak resident memory in
    bytes."""
    procs = []
    for i, cmd in enumerate(commands):
        err = open(out_dir / f'stderr{i}.txt', 'w+')
        report = out_dir / f'measured{i}.json'
        proc = subprocess.Popen(
            [sys.executable, '-c', MEASURE, str(report)]
            + [sys.executable if c == 'python' else str(c) for c in cmd],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
            env=tool_env(), start_new_session=True)
        procs.append((proc, err, report, time.monotonic()))
    results = [None] * len(procs)
    deadline = time.monotonic() + timeout
    while any(r is None for r in results) and time.monotonic() < deadline:
        for i, (proc, err, report, start) in enumerate(procs):
            if results[i] is not None or proc.poll() is None:
                continue
            assert proc.returncode == 0, f'the measuring process failed: ' \
                f'{proc.returncode}'
            err.seek(0)
            results[i] = argparse.Namespace(
                **json.loads(report.read_text()), stderr=err.read(),
                wall=time.monotonic() - start)
        time.sleep(0.05)
    for i, (proc, err, _, _) in enumerate(procs):
        if results[i] is None:  # hung: kill it and the tool, report it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            results[i] = argparse.Namespace(returncode=None, stderr='',
                                            wall=timeout, cpu=0, peak=0)
        err.close()
    return results


@pytest.fixture(scope='module')
def hostile_runs(files, seg_config):
    """Each hostile file through ``tools/test.py CONFIG FILE`` (all at
    once), next to a victim file a tar member links to."""
    tmp = files['tmp'] / 'hostile'
    tmp.mkdir()
    victim = tmp / 'victim.txt'
    victim.write_text('not yours')
    os.chmod(victim, 0o640)
    os.utime(victim, (1_000_000_000, 1_000_000_000))
    before = os.stat(victim)
    paths = {}
    for i, (name, (make, _)) in enumerate(HOSTILE.items()):
        paths[name] = tmp / f'hostile{i}.pth'
        paths[name].write_bytes(make(str(victim)))
    results = run_measured(
        [('python', 'tools/test.py', seg_config, path, '--work-dir',
          tmp / f'work{i}') for i, path in enumerate(paths.values())], tmp)
    return victim, before, paths, dict(zip(paths, results))


@pytest.mark.parametrize('kind', list(HOSTILE))
def test_tools_refuse_hostile_files(hostile_runs, kind, no_marker):
    """tools/test.py on each hostile file: exit 2 (not a crash, not a
    hang) with one line naming the file and what it wanted, in seconds of
    CPU and under 1.5 GiB, the victim file untouched (mode, times, owner,
    contents)."""
    victim, before, paths, results = hostile_runs
    run = results[kind]
    assert run.returncode == 2, (run.returncode, run.stderr[-3000:])
    line = one_line_error(run, paths[kind])
    assert HOSTILE[kind][1] in line, line
    assert run.cpu < 10, run.cpu
    assert run.peak < 1.5 * 2**30, run.peak
    after = os.stat(victim)
    for field in ('st_mode', 'st_mtime', 'st_uid', 'st_gid', 'st_nlink',
                  'st_size'):
        assert getattr(after, field) == getattr(before, field), field
    assert victim.read_text() == 'not yours'


# ---------------------------------------------------------------------------
# what mmvim writes loads on the safe path
# ---------------------------------------------------------------------------
def assert_same_objects(a, b, where='checkpoint') -> None:
    """``a`` (safe load) holds what ``b`` (full unpickle) holds: same
    types, tensors and arrays bit for bit."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same_objects(a[key], b[key], f'{where}[{key!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_objects(x, y, f'{where}[{i}]')
    elif hasattr(a, '__dict__') and not callable(a):
        assert_same_objects(vars(a), vars(b), f'{where}.__dict__')
    else:
        assert a == b or (a != a and b != b), where  # NaN


@pytest.mark.parametrize('config', [
    pytest.param(SEG_CONFIG, id='seg'),
    pytest.param(DET_CONFIG, id='det', marks=pytest.mark.slow)])
def test_what_training_writes_loads_on_the_safe_path(config, tmp_path):
    """The runner tools/train.py builds, on the demo configs for 2
    iterations: its checkpoint (model, optimizer, schedulers, message hub
    with HistoryBuffers and numpy values, RNG states, dataset meta) loads
    on the safe path with no warning, equal to a full
    unpickle."""
    from mmvim.datasets import make_demo_detection, make_demo_segmentation
    from mmvim.utils import build_runner, load_config
    det = config == DET_CONFIG
    make = make_demo_detection if det else make_demo_segmentation
    data = make(str(tmp_path / 'data'), 2, 2, 64) + '/'
    body = loader_settings(data, 2) + (
        'train_cfg = dict(max_iters=2, val_interval=100)\n'
        'default_hooks = dict(checkpoint=dict(interval=2), '
        'logger=dict(interval=1))\n')
    if det:
        ann = data + 'annotations/instances_val2017.json'
        body += (f'val_evaluator = dict(ann_file={ann!r})\n'
                 f'test_evaluator = dict(ann_file={ann!r})\n')
    cfg = load_config(write_config(tmp_path / 'cfg.py', config, body))
    cfg.work_dir, cfg.launcher = str(tmp_path / 'w'), 'none'
    build_runner(cfg).train()
    path = str(tmp_path / 'w' / 'iter_2.pth')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ckpt = load_checkpoint_file(path)
    full = torch.load(path, weights_only=False)
    assert {'state_dict', 'optimizer', 'param_schedulers', 'message_hub',
            'meta', 'rng_states'} <= set(ckpt)
    assert_same_objects(ckpt, full)
    loss = ckpt['message_hub']['log_scalars']['train/loss']
    assert loss.mean() == full['message_hub']['log_scalars'][
        'train/loss'].mean()
