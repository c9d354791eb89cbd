"""Post-hoc EMA: the EMA of any width at any snapshot step, reconstructed from a run's snapshots, as a new workdir.

  python -m ddpm_jax.phema --workdir=runs/cosine_mae --sigma_rel=0.08 [--step=N] --out=runs/cosine_mae_phema0.08

The run must have trained with --config.training.phema_sigma_rels (EDM2: "(0.05, 0.1)"). The new workdir's
checkpoint holds the reconstruction as params and EMA params: --mode=sample, --mode=eval, the report and
export open it as any run. In Python: `reconstruct(workdir, sigma_rel, step) -> (params, record)` and
`write_workdir(workdir, sigma_rel, step, out)` (ddpm_jax/run/phema_snapshots.py, phema_workdir.py; here too).
"""
import argparse
import sys

from ddpm_jax import cli

PROGRAM = 'ddpm_jax.phema'


def reconstruct(workdir: str, sigma_rel: float, step: int | None = None) -> tuple[dict, dict]:
  """Returns (the params of the post-hoc EMA of sigma_rel at step, the snapshots' weights): the Python API."""
  from ddpm_jax.run import phema_snapshots  # pylint: disable=g-import-not-at-top  # loads JAX: not for --help
  return phema_snapshots.reconstruct(workdir, sigma_rel, step)


def write_workdir(workdir: str, sigma_rel: float, step: int | None, out: str) -> dict:
  """Returns the record of the reconstruction it wrote as the workdir out (the CLI's action): the Python API."""
  from ddpm_jax.run import phema_workdir  # pylint: disable=g-import-not-at-top
  return phema_workdir.write_workdir(workdir, sigma_rel, step, out)


def parse_args(argv: list[str]) -> argparse.Namespace:
  """Returns the parsed command line; a malformed one exits with argparse's usage line (status 2)."""
  parser = argparse.ArgumentParser(prog='python -m ddpm_jax.phema', description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='a run trained with training.phema_sigma_rels')
  parser.add_argument('--sigma_rel', type=float, required=True,
                      help='the EMA width to reconstruct, relative to the step, in (0, 0.2887); EDM2 tracks 0.05, 0.1')
  parser.add_argument('--step', type=int, default=None,
                      help='the training step to reconstruct at (default: the last snapshot)')
  parser.add_argument('--out', required=True, help='the new workdir to write (must not exist, or be empty)')
  parser.add_argument('--traceback', action='store_true', help='show the full traceback of an input error')
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
  """Writes the reconstruction's workdir; a bad input exits with one line and status 2, nothing written."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  with cli.one_line_errors(PROGRAM, args.traceback):
    record = write_workdir(args.workdir, args.sigma_rel, args.step, args.out)
  used = sum(1 for s in record['snapshots'] if s['weight'])
  print(f'Wrote {args.out}: the post-hoc EMA of sigma_rel={args.sigma_rel:g} at step {record["step"]} of '
        f'{args.workdir}, from {used} snapshots (phema.json has their weights).')


if __name__ == '__main__':
  main()
