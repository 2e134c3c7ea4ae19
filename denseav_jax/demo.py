"""A local web demo: upload or record a sound, pick an image or a video, see what DenseAV
hears where (docs/demo.md).

  python -m denseav_jax.demo [--checkpoint WORKDIR|MODEL_DIR] [--port 7860] [--host 127.0.0.1]
      [--config CONFIG] [--max_upload_mb 50]

Needs the `demo` extra (pip install -e ".[demo]": Gradio, and PyAV for videos). The model is
a training workdir (its latest checkpoint) or a converted model folder, loaded once; with no
--checkpoint, the quick start's run (runs/synthetic) when it exists. The server listens on
127.0.0.1 (this machine only) unless --host says otherwise. Three tabs: image + audio,
video, examples (held-out pairs and a demo video of the built-in synthetic world).
"""

import os

from absl import flags

from denseav_jax import cli
from denseav_jax import errors

QUICK_START = 'runs/synthetic'


def resolve(checkpoint: str | None) -> str:
  """--checkpoint, or the quick start's run when there is one; a one-line error if neither."""
  if checkpoint:
    return checkpoint
  if not os.path.isdir(os.path.join(QUICK_START, 'checkpoints')):
    raise errors.UserError(
        f'no model: pass --checkpoint WORKDIR (a training run) or MODEL_DIR (python -m '
        f'denseav_jax.convert ... --output MODEL_DIR), or train the quick start first: '
        f'bash launch/quickstart.sh (it writes {QUICK_START})')
  return QUICK_START


def load(checkpoint: str | None, config=None):
  """(model, params, config, source) from --checkpoint, or the quick start's run."""
  from denseav_jax.inference import predict  # pylint: disable=g-import-not-at-top
  checkpoint = resolve(checkpoint)
  model, params, config = predict.load_model(checkpoint, config)
  return model, params, config, checkpoint


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if f.max_upload_mb <= 0:
    raise errors.UserError(f'--max_upload_mb={f.max_upload_mb} must be > 0')
  resolve(f.checkpoint)  # Mistakes in the flags first: Gradio takes seconds to import.
  # A local demo: no usage reports to Gradio's servers.
  os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
  try:
    import gradio  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise errors.UserError('the demo needs Gradio: pip install -e ".[demo]"') from None
  from denseav_jax.inference import demo_app  # pylint: disable=g-import-not-at-top
  model, params, config, source = load(f.checkpoint, cli.load_config_flag(required=False))
  demo = demo_app.Demo(model, params, config, source, max_upload_mb=f.max_upload_mb)
  print(f'Model: {source}; writing the examples ...', flush=True)
  examples = demo_app.write_examples(config, os.path.join(demo.out_dir, 'examples'))
  page = demo_app.build(demo, examples)
  print(f'Open http://{f.host}:{f.port} (Ctrl-C stops the demo)', flush=True)
  page.launch(server_name=f.host, server_port=f.port, share=False, show_error=False,
              allowed_paths=[demo.out_dir], theme=demo_app.theme())


def define_flags():
  cli.define_flags(workdir=False)
  flags.DEFINE_string('checkpoint', None, 'A training workdir or a converted model folder '
                      f'(default: {QUICK_START}, the quick start\'s run, when it exists)')
  flags.DEFINE_integer('port', 7860, 'Port of the local server')
  flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on (0.0.0.0: every '
                      'interface; the default is this machine only)')
  flags.DEFINE_float('max_upload_mb', 50.0, 'Largest upload accepted, in MB')


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
