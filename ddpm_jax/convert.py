"""diffusers folders in and out: import released UNet2DModel weights as a workdir, export a run to DDPMPipeline.

  python -m ddpm_jax.convert import --source=google/ddpm-cifar10-32 --workdir=runs/ddpm_cifar10
  python -m ddpm_jax.convert export --workdir=runs/cosine_mae --out=exports/cosine_mae [--params=raw]

In Python: `from_diffusers(path_or_id) -> (config, params)` and `to_diffusers(config, params, out_dir)`
(ddpm_jax/interop/diffusers_io.py). This module is the command line only.
"""
from absl import app, flags

from ddpm_jax import cli
from ddpm_jax.interop.diffusers_io import from_diffusers, to_diffusers  # noqa: F401  # the Python API

PROGRAM = 'ddpm_jax.convert'

COMMANDS = ('import', 'export')
FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the CLI's flags (only when run as a program: importing the API defines none)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('source', None, 'import: a diffusers pipeline or model folder, or a Hub id (owner/name).')
  flags.DEFINE_string('workdir', None, 'import: the new workdir to write; export: the run to read.')
  config_flags.DEFINE_config_file('config', None, 'import: the config whose data, training, sampling and eval '
                                  'sections the workdir gets (default: every key at its default).', lock_config=False)
  flags.DEFINE_string('out', None, 'export: the folder to write (new or empty, or an earlier export with --overwrite).')
  flags.DEFINE_integer('checkpoint_step', None, 'export: the checkpoint to read (default: the newest intact one).')
  flags.DEFINE_enum('params', 'ema', ['ema', 'raw'], 'export: the EMA params (default) or the raw ones.')
  flags.DEFINE_bool('overwrite', False, 'export: replace an earlier export at --out.')
  flags.DEFINE_string('cache_dir', None, 'import: the Hugging Face cache to use (default: HF_HUB_CACHE).')
  flags.DEFINE_bool('traceback', False, 'Show the full traceback of an input error.')


def run(command: str) -> str:
  """Runs `import` or `export` with the flags; returns what it wrote."""
  from ddpm_jax.interop import workdir_io  # pylint: disable=g-import-not-at-top  # loads JAX: not for --help
  required = {'import': ('source', 'workdir'), 'export': ('workdir', 'out')}[command]
  missing = [f'--{name}' for name in required if not FLAGS[name].value]
  if missing:
    raise ValueError(f'{command} needs {" and ".join(missing)}')
  if command == 'import':
    config = workdir_io.import_to_workdir(FLAGS.source, FLAGS.workdir, FLAGS.config, FLAGS.cache_dir)
    print(f'Imported {FLAGS.source} into {FLAGS.workdir} (checkpoint 0, {config.data.image_size} px, '
          f'{config.diffusion.schedule} schedule, T={config.diffusion.num_timesteps}, '
          f'{config.diffusion.prediction} prediction).')
    return FLAGS.workdir
  out = workdir_io.export_workdir(FLAGS.workdir, FLAGS.out, FLAGS.checkpoint_step, FLAGS.params, FLAGS.overwrite)
  print(f'Exported {FLAGS.workdir} ({FLAGS.params} params) to {out}: DDPMPipeline.from_pretrained({out!r})')
  return out


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    cli.fail(PROGRAM, f'give one command, {" or ".join(COMMANDS)} (got {argv[1:]})')
  cli.quiet_libraries(FLAGS['verbosity'].present, FLAGS.traceback)  # Orbax logs ~30 lines an export
  with cli.one_line_errors(PROGRAM, FLAGS.traceback):
    run(argv[1])


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=lambda argv: cli.parse_or_fail(PROGRAM, FLAGS, argv))  # --help exits 0
