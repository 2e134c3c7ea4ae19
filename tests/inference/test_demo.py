"""The web demo (python -m denseav_jax.demo; inference/demo_app.py): its handlers, and the
page in a real browser (headless Chromium driven by Selenium) against a server started by
the command on a tiny trained run.

The browser test needs Gradio and Selenium (the `demo` / `test` extras) and Debian's
`chromium` + `chromium-driver` (.ci/run installs them); it is skipped where they are
missing. With DENSEAV_DEMO_SCREENSHOTS=DIR it saves a screenshot of each tab there (the
README's: docs/demo_*.png)."""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from conftest import ROOT, load_config, subprocess_env
from denseav_jax.inference import demo_app
from denseav_jax.inference import predict as predict_lib
from denseav_jax.trainer import loop

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
DRIVER = shutil.which('chromedriver')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny trained run (4 steps of synthetic:runlocal), its model, and the examples."""
  workdir = str(tmp_path_factory.mktemp('demo') / 'run')
  c = load_config()
  c.update(num_train_steps=4, pretrain_steps=2, log_every_steps=2, checkpoint_every_steps=4,
           eval_at_end=False)
  loop.train_and_evaluate(c, workdir)
  model, params, config = predict_lib.load_model(workdir)
  demo = demo_app.Demo(model, params, config, workdir)
  examples = demo_app.write_examples(config, str(tmp_path_factory.mktemp('examples')))
  return dict(workdir=workdir, demo=demo, examples=examples)


def test_handlers_draw_predicts_figure_and_say_what_is_wrong(run, tmp_path):
  demo, (_, img, wav, _) = run['demo'], run['examples']['pairs'][0]
  got = demo.image_audio(img, wav)
  c = demo.config
  image = predict_lib.load_image(img, c.input.image_size)
  audio, n = predict_lib.load_audio(wav, c)
  want = predict_lib.draw_figure(
      image, predict_lib.predict(demo.model, demo.params, c, image, audio, n), c)
  np.testing.assert_array_equal(got.output, want)
  assert got.message.startswith('score ')
  # A span: the samples between its ends become the clip.
  span = demo.image_audio(img, wav, '0.5-1.5')
  rate = c.input.sample_rate
  piece = audio[int(0.5 * rate):int(1.5 * rate)]
  alone = predict_lib.predict(demo.model, demo.params, c, image, piece, piece.shape[0])
  np.testing.assert_array_equal(span.output, predict_lib.draw_figure(image, alone, c))
  assert 'between 0.50 s and 1.50 s' in span.message
  # Mistakes: a message, no output.
  import soundfile  # pylint: disable=g-import-not-at-top
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'not an image')
  silent, long_ = tmp_path / 'silent.wav', tmp_path / 'long.wav'
  soundfile.write(silent, np.zeros(rate, np.float32), rate)
  soundfile.write(long_, 0.1 * np.sin(np.arange(rate * 8) * 0.05).astype(np.float32), rate)
  big = tmp_path / 'big.wav'
  big.write_bytes(b'\0' * 2**20)
  small = demo_app.Demo(demo.model, demo.params, c, max_upload_mb=0.5)
  for result, words in ((demo.image_audio(str(bad), wav), 'not an image PIL can read'),
                        (demo.image_audio(img, str(silent)), 'silent'),
                        (demo.image_audio(img, None), 'no audio'),
                        (demo.image_audio(img, wav, 'soon'), 'time span'),
                        (small.image_audio(img, str(big)), 'over the 0.5 MB limit')):
    assert result.output is None and result.message.startswith('**Cannot show this:**')
    assert words in result.message, result.message
  note = demo.image_audio(img, str(long_))
  assert note.output is not None and 'its first 3.00 s' in note.message
  # A video without a sound track.
  from denseav_jax.inference import video_io  # pylint: disable=g-import-not-at-top
  mute = str(tmp_path / 'mute.mp4')
  video_io.write_video(mute, np.zeros((5, 64, 64, 3), np.uint8), 5.0, None, None)
  r = demo.video(mute)
  assert r.output is None and 'sound' in r.message, r.message


@pytest.mark.subprocess
def test_no_model_is_one_line(tmp_path):
  """No --checkpoint and no quick-start run here: one line saying how to get a model,
  before Gradio is imported (it needs no Gradio)."""
  r = subprocess.run([sys.executable, '-m', 'denseav_jax.demo'], cwd=tmp_path,
                     env=subprocess_env(devices=None), capture_output=True, text=True,
                     timeout=120, check=False)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'no model' in lines[0] and 'quickstart.sh' in lines[0]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _fetch(url: str) -> bytes:
  with urllib.request.urlopen(url, timeout=60) as r:
    return r.read()


@pytest.mark.subprocess
@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason='needs chromium and chromium-driver '
                    '(apt-get install chromium chromium-driver)')
def test_page_in_a_browser(run, tmp_path):
  pytest.importorskip('gradio')
  webdriver = pytest.importorskip('selenium.webdriver')
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support import expected_conditions as ec  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import av  # pylint: disable=g-import-not-at-top

  shots = os.environ.get('DENSEAV_DEMO_SCREENSHOTS') or str(tmp_path)
  os.makedirs(shots, exist_ok=True)
  port = _free_port()
  log = open(tmp_path / 'server.log', 'w')  # pylint: disable=consider-using-with
  # No compilation cache: the server then compiles as this process does, whose figure it
  # must show pixel for pixel (conftest.subprocess_env).
  server = subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, '-m', 'denseav_jax.demo', '--checkpoint', run['workdir'], '--port',
       str(port)], cwd=ROOT, env=subprocess_env(devices=None, cache=False), stdout=log,
      stderr=subprocess.STDOUT)
  url = f'http://127.0.0.1:{port}'
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
              '--window-size=1400,1200'):
    options.add_argument(arg)
  driver = None
  try:
    end = time.time() + 180
    while True:  # The server: JAX, the model, the examples, then Gradio.
      assert server.poll() is None, (tmp_path / 'server.log').read_text()[-3000:]
      try:
        _fetch(url)
        break
      except OSError:
        assert time.time() < end, (tmp_path / 'server.log').read_text()[-3000:]
        time.sleep(0.5)
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    wait = WebDriverWait(driver, 120)
    driver.get(url)

    def upload(elem_id, path):
      box = wait.until(ec.presence_of_element_located(
          (By.CSS_SELECTOR, f'#{elem_id} input[type=file]')))
      box.send_keys(path)

    def output_src(elem_id, tag):
      element = wait.until(ec.presence_of_element_located(
          (By.CSS_SELECTOR, f'#{elem_id} {tag}[src]')))
      return element.get_attribute('src')

    def status(elem_id):
      return driver.find_element(By.ID, elem_id).text

    # 1. Image + audio: the picture shown is predict's figure, pixel for pixel.
    _, img, wav, _ = run['examples']['pairs'][0]
    upload('image_in', img)
    upload('audio_in', wav)
    time.sleep(1.0)  # The uploads land in the components.
    driver.find_element(By.ID, 'pair_run').click()
    src = output_src('pair_out', 'img')
    shown = np.asarray(Image.open(io.BytesIO(_fetch(src))).convert('RGB'))
    want = run['demo'].image_audio(img, wav).output
    np.testing.assert_array_equal(shown, want)
    assert status('pair_status').startswith('score ')
    assert driver.save_screenshot(os.path.join(shots, 'demo_image_audio.png'))

    # 2. A file PIL cannot read: the message on the page, no stack trace.
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not an image at all')
    driver.get(url)  # A fresh page.
    upload('image_in', str(bad))
    upload('audio_in', wav)
    time.sleep(1.0)
    driver.find_element(By.ID, 'pair_run').click()
    wait.until(lambda d: 'Cannot show this' in status('pair_status'))
    assert 'not an image PIL can read' in status('pair_status')
    assert 'Traceback' not in driver.page_source

    # 3. Video: a playable MP4 with predict --video's frames.
    driver.find_element(By.XPATH, '//button[@role="tab" and normalize-space()="video"]').click()
    video = run['examples']['video']
    upload('video_in', video)
    time.sleep(1.0)
    driver.find_element(By.ID, 'video_run').click()
    src = output_src('video_out', 'video')
    out = tmp_path / 'shown.mp4'
    out.write_bytes(_fetch(src))
    with av.open(str(out)) as f:
      frames = sum(1 for _ in f.decode(video=0))
    want = run['demo'].video(video)
    assert want.output and frames == int(want.message.split()[0]) > 0, (frames, want.message)
    driver.execute_script('arguments[0].scrollIntoView()',
                          driver.find_element(By.ID, 'video_run'))
    assert driver.save_screenshot(os.path.join(shots, 'demo_video.png'))

    # 4. Examples: one click shows a held-out pair's heat maps.
    driver.find_element(By.XPATH,
                        '//button[@role="tab" and normalize-space()="examples"]').click()
    wait.until(ec.element_to_be_clickable((By.ID, 'example_0'))).click()
    output_src('example_out', 'img')
    wait.until(lambda d: 'objects=' in status('example_status'))
    assert driver.save_screenshot(os.path.join(shots, 'demo_examples.png'))
  finally:
    if driver is not None:
      driver.quit()
    server.terminate()
    try:
      server.wait(timeout=30)
    except subprocess.TimeoutExpired:
      server.kill()
    log.close()
