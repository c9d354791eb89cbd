"""Reference statistics of a dataset's split, written once, to score against with eval.reference_stats=PATH.

  python -m ddpm_jax.stats compute --config=configs/cifar10_ddpm.py --split=train --out=refs/cifar10_train.npz
  python -m ddpm_jax.main ... --mode=eval --config.eval.reference_stats=refs/cifar10_train.npz

The file holds mu, sigma, the per-image Inception features (KID, precision/recall), the artefacts' per-image
statistics and a record of the extractor, its weights' SHA-256, the image size, dataset, split and count
(ddpm_jax/evaluation/reference_stats.py, which also reads EDM's, ADM's and clean-fid's files). This module is
the command line only.
"""
from absl import app, flags

from ddpm_jax import cli

PROGRAM = 'ddpm_jax.stats'
COMMANDS = ('compute',)
SPLITS = ('train', 'test')
FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the CLI's flags (only when run as a program: importing the module defines none)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'The config whose data.* (dataset, image size, split seed) and '
                                  'eval.inception_weights the statistics are of; --config.KEY=VALUE overrides.',
                                  lock_config=True)
  flags.DEFINE_enum('split', 'train', SPLITS, "The split ('train' is what the paper protocol compares with).")
  flags.DEFINE_string('out', None, 'The .npz to write.')
  flags.DEFINE_integer('count', 0, 'The first COUNT images of the split (0 = all of it).', lower_bound=0)
  flags.DEFINE_bool('traceback', False, 'Show the full traceback of an input error.')


def run(command: str, config, split: str, out: str | None, count: int = 0, progress: bool = True) -> dict:
  """Runs `compute` on the config (a ConfigDict or a typed Config); returns the record of the file written."""
  if command not in COMMANDS:
    raise ValueError(f'give one command, {" or ".join(COMMANDS)} (got {command!r})')
  if config is None or not out:
    raise ValueError(f'{command} needs --config and --out (python -m {PROGRAM} compute --config=... '
                     '--split=train --out=REF.npz)')
  # Imported here so that --help and usage errors answer without loading JAX and torch.
  from ddpm_jax.config import checks, convert  # pylint: disable=g-import-not-at-top
  from ddpm_jax.evaluation import reference_stats  # pylint: disable=g-import-not-at-top
  config = convert.from_configdict(config)
  checks.validate_config(config)
  record = reference_stats.compute(config, split, out, count, progress=progress)
  print(f'Wrote {out}: {record["count"]} {record["split"]} images of {record["dataset"]} at {record["image_size"]} px, '
        f'{record["extractor"]} (weights sha256 {record["weights_sha256"][:16]}); score against it with '
        f'--config.eval.reference_stats={out}')
  return record


def load_config():
  """Returns --config with its overrides (None without one); a file that won't load becomes a ValueError."""
  if not FLAGS['config'].present:
    return None
  try:
    config = FLAGS.config
    config.data  # pylint: disable=pointless-statement  # config_flags loads the file on first access
    return config
  except (OSError, AttributeError, KeyError, TypeError) as e:
    raise ValueError(f'bad --config or override: {e}') from None


def main(argv):
  with cli.one_line_errors(PROGRAM, FLAGS.traceback):
    if len(argv) != 2:
      raise ValueError(f'give one command, {" or ".join(COMMANDS)} (got {argv[1:]})')
    run(argv[1], load_config(), FLAGS.split, FLAGS.out, FLAGS.count)


if __name__ == '__main__':
  define_flags()
  app.run(main)
