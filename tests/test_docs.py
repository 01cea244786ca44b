"""The documentation site as a reader sees it: `make docs`'s Sphinx build
(warnings are errors) opened in headless Chromium.

Needs the docs extra (Sphinx, MyST, furo; in dev), selenium (dev) and the
system's Chromium with its driver (Debian: ``apt-get install chromium
chromium-driver``; .ci/run installs them where it can). Without them the
browser test skips and says which is missing; nothing is downloaded.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ('chromium', 'chromium-browser', 'google-chrome')


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    """docs/ built as `make docs` builds it, into a fresh folder."""
    pytest.importorskip('sphinx', reason='the docs extra (Sphinx) is not '
                        "installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp('site')
    proc = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b',
         'html', str(ROOT / 'docs'), str(out / 'html')],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out / 'html'


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    """Headless Chromium through the system's chromedriver."""
    webdriver = pytest.importorskip(
        'selenium.webdriver', reason='selenium is not installed (dev extra)')
    binary = next(filter(None, map(shutil.which, BROWSERS)), None)
    driver_path = shutil.which('chromedriver')
    if binary is None or driver_path is None:
        pytest.skip('no Chromium with chromedriver on PATH (Debian: apt-get '
                    'install chromium chromium-driver)')
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tmp_path_factory.mktemp('chromium-profile')
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu',
                 '--disable-dev-shm-usage', '--disable-quic',
                 '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync',
                 '--window-size=1280,1024', f'--user-data-dir={profile}'):
        options.add_argument(flag)
    # an explicit driver: selenium's manager never looks for one online
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def _open(driver, site: Path, page: str) -> None:
    driver.get((site / page).as_uri())
    assert driver.execute_script('return document.readyState') == 'complete'


@pytest.mark.slow
def test_site_pages_in_a_browser(site, browser, tmp_path):
    # the API page of Vim: its signature and its parameters
    _open(browser, site, 'api/models.html')
    signature = browser.execute_script(
        "return document.getElementById('mmvim.models.backbones.vim.Vim')"
        '.innerText')
    assert signature.startswith('class mmvim.models.backbones.vim.Vim(')
    for argument in ("arch: str = 'tiny'", 'img_size', 'out_indices',
                     "scan_route: str | dict = 'raster'", 'init_cfg'):
        assert argument in signature, argument
    fields = browser.execute_script(
        "const dt = document.getElementById('mmvim.models.backbones.vim.Vim');"
        "const list = dt.nextElementSibling.querySelector('dl.field-list');"
        'return list ? list.innerText : null')
    # (innerText is as shown: furo's CSS writes the field name in capitals)
    assert fields is not None and fields.lower().startswith('parameters')
    for parameter in ('arch', 'img_size', 'out_indices', 'feature',
                      'drop_path_rate', 'init_cfg'):
        assert f'\n{parameter} – ' in fields, parameter

    # the model-zoo tables, with the paper's numbers
    _open(browser, site, 'model_zoo.html')
    tables = browser.execute_script(
        "return Array.from(document.querySelectorAll('table'))"
        '.map(t => t.innerText)')
    segmentation = next(t for t in tables if 'mIoU SS (MS)' in t)
    assert segmentation.count('_ade20k.py') == 8
    assert 'upernet_vim_ti_ade20k.py' in segmentation and '41.0' in segmentation
    assert any('cascade_mask_rcnn_vim_ti_vitdet_coco.py' in t and '45.7' in t
               for t in tables)

    # the benchmark plot is an image that loads
    _open(browser, site, 'benchmarks.html')
    size = browser.execute_script(
        "const img = Array.from(document.images)"
        ".find(i => i.src.endsWith('sweep_cpu.png'));"
        'return img && img.complete ? [img.naturalWidth, img.naturalHeight]'
        ' : null')
    assert size is not None and size[0] > 0 and size[1] > 0
    browser.execute_script(  # 'instant': the theme scrolls smoothly
        "Array.from(document.images).find(i => i.src.endsWith("
        "'sweep_cpu.png')).scrollIntoView({behavior: 'instant', "
        "block: 'center'})")
    shot = tmp_path / 'benchmarks.png'
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
