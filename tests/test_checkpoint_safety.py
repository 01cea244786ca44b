"""Checkpoint files cannot run code: every place mmvim reads one (the
loader mmengine calls, ``init_cfg=dict(type='Pretrained')``, the runner's
``load_from`` / ``--resume``, the inferencers, tools/test.py, train.py,
infer.py, convert_checkpoint.py and erf.py) refuses a file whose unpickling
would call something that could run code, with one line naming the file
and the global, and runs nothing; ``MMVIM_TRUST_CHECKPOINTS=1`` is the
explicit opt-in. The metadata real releases and runs carry (argparse
Namespace, a yacs CfgNode without yacs installed, numpy values, mmengine's
resume state) loads as data with the weights bit for bit."""
import argparse
import collections
import copyreg
import functools
import importlib.util
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e import DET_CONFIG, SEG_CONFIG, loader_settings, tool_env, write_config

from mmvim.checkpoint import (
    TRUST_ENV,
    CheckpointFileError,
    UnpickledObject,
    UnsafeCheckpointError,
    load_checkpoint_file,
    safe_pickle,
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
        'subprocess.Popen': (Call(subprocess.Popen, ['touch', str(marker)]),
                             'subprocess.Popen'),
        'functools.partial': (Call(functools.partial(
            os.system, f'touch {marker}')), 'functools.partial'),
        # an allowed torch function handed a callable to call
        'rebuild_from_type': (Call(torch._tensor._rebuild_from_type_v2,
                                   os.system, torch.Tensor,
                                   (f'touch {marker}', ), {}),
                              'torch._tensor._rebuild_from_type_v2'),
    }


# Hand-written pickles (protocol 2 header, then opcodes as text) that try to
# reach a callable through allowed globals.
GADGETS = {
    # getattr(object, '__subclasses__')() -> every class in the process
    'getattr': (b"cbuiltins\ngetattr\n(cbuiltins\nobject\nV__subclasses__"
                b"\ntR)R.", 'builtins.getattr'),
    # getattr on a class the allowlist knows, for a name it does not
    'getattr HistoryBuffer': (
        b"c__builtin__\ngetattr\n(cmmengine.logging.history_buffer\n"
        b"HistoryBuffer\nVregister_statistics\ntR.", 'builtins.getattr'),
    # BUILD on a class: would replace argparse.Namespace.__eq__
    'BUILD on a class': (b"cargparse\nNamespace\n(N}V__eq__\ncbuiltins\n"
                         b"print\nstb.", 'argparse.Namespace'),
    # INST (protocol 0's call)
    'INST': (b"(Vtouch /nonexistent/x\niposix\nsystem\n.", 'posix.system'),
    # NEWOBJ of a function: not a class
    'NEWOBJ of a function': (b"ctorch._utils\n_rebuild_tensor_v2\n)\x81.",
                             'torch._utils._rebuild_tensor_v2'),
    # calling a class that may only be named (numpy.ndarray(...))
    'call a named class': (b"cnumpy\nndarray\n(I2\ntR.", 'numpy.ndarray'),
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


def refused(path, global_name: str, call=load_checkpoint_file) -> str:
    """``call(path)`` raises the one-line refusal naming the file and the
    global; returns the message."""
    with pytest.raises(UnsafeCheckpointError) as err:
        call(path)
    message = str(err.value)
    assert '\n' not in message and str(path) in message, message
    assert global_name in message and TRUST_ENV in message, message
    return message


@pytest.mark.parametrize('fmt', ['zip', 'legacy', 'pickle'])
@pytest.mark.parametrize('kind', list(payloads(Path('m'))))
def test_a_file_that_wants_to_run_code_is_refused(tmp_path, kind, fmt):
    marker = tmp_path / 'MARKER'
    obj, name = payloads(marker)[kind]
    path = save({'state_dict': {'w': torch.ones(2)}, 'meta': {'x': obj}},
                tmp_path / 'evil.pth', fmt)
    refused(path, name)
    assert not marker.exists()


@pytest.mark.parametrize('kind', list(GADGETS))
def test_allowed_globals_do_not_reach_other_callables(tmp_path, kind):
    data, name = GADGETS[kind]
    data = b'\x80\x02' + data
    eq = argparse.Namespace.__eq__
    path = tmp_path / 'gadget.pth'
    path.write_bytes(data)  # a bare pickle (torch's legacy reader)
    refused(str(path), name)
    with pytest.raises(safe_pickle.RefusedGlobal, match=name):
        safe_pickle.loads(data)
    assert argparse.Namespace.__eq__ is eq


def test_a_reconstructor_of_an_unknown_class_stays_data(tmp_path):
    """copyreg._reconstructor(cls, base, state) calls ``base.__init__``:
    with subprocess.Popen as both it would run a command; mmvim keeps it as
    an inert record instead."""
    marker = tmp_path / 'MARKER'
    obj = Call(copyreg._reconstructor, subprocess.Popen, subprocess.Popen,
               ['touch', str(marker)])
    path = save({'x': obj}, tmp_path / 'r.pth')
    with pytest.warns(UserWarning, match='subprocess.Popen'):
        out = load_checkpoint_file(path)
    assert isinstance(out['x'], UnpickledObject)
    assert out['x'].global_name == 'subprocess.Popen'
    assert not marker.exists()


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
    cfg = meta['config']
    assert isinstance(cfg, UnpickledObject) and isinstance(cfg, dict)
    assert cfg.global_name == 'yacs.config.CfgNode'
    assert cfg['MODEL']['VSSM']['DEPTHS'] == [2, 2, 8, 2]
    assert cfg['TRAIN'] == {'EPOCHS': 300, 'BASE_LR': 0.001}
    assert cfg.state['__immutable__'] is True
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
        ckpt = torch.load(out[name], weights_only=False,
                          pickle_module=safe_pickle)
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
        with pytest.warns(UserWarning, match='yacs.config.CfgNode') as seen:
            ckpt = load_checkpoint_file(files[name])
        assert len(seen) == 1, [str(w.message) for w in seen]
        same_weights(ckpt[key], files[f'{name}_sd'])
        check_release_metadata(ckpt.get('meta', ckpt))
    # saved again (e.g. by a tool that keeps the meta), it loads back
    again = save(ckpt, tmp_path / 'again.pth')
    with pytest.warns(UserWarning, match='yacs.config.CfgNode'):
        check_release_metadata(load_checkpoint_file(again)['meta'])


def test_the_opt_in_still_opens_classes_of_absent_modules(files,
                                                          monkeypatch):
    """With MMVIM_TRUST_CHECKPOINTS=1 a file whose full unpickle needs a
    module that is not installed (yacs) still loads, as placeholders."""
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
    on the safe path with no warning and no placeholder, equal to a full
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
