"""Run workdirs → a table of metrics, five figures and one HTML page that compare the runs (ddpm_jax/reporting/).

  python -m ddpm_jax.report --workdirs runs/study/* --out reports/study

Reads each workdir's config.json, event files (loss), eval/step_<N>.json and samples/step_<N>.png;
writes table.md, loss.png, metrics.png, schedules.png, luminance.png, samples.png and report.html (all of it
on one self-contained page, images embedded); after a post-hoc EMA sweep phema.png, after a guidance sweep
(eval/guidance/) guidance.png and a table of each w.
"""
import argparse
import sys

from ddpm_jax import cli
from ddpm_jax.reporting.table import MISSING, loss_cell, table_markdown, write_report  # noqa: F401  # the Python API

PROGRAM = 'ddpm_jax.report'


def parse_args(argv: list[str]) -> argparse.Namespace:
  """Returns the parsed command line; a bad one exits with argparse's usage line."""
  parser = argparse.ArgumentParser(prog='python -m ddpm_jax.report', description=__doc__.split('\n')[0])
  parser.add_argument('--workdirs', nargs='+', required=True, help='workdirs of training runs, one row each')
  parser.add_argument('--out', required=True, help='directory for table.md and the figures')
  parser.add_argument('--smoothing', type=float, default=0.01,
                      help='centred smoothing window of the loss curves as a fraction of the longest run, in [0, 1) '
                           '(0 = raw); a local linear fit, so the curves do not lag')
  args = parser.parse_args(argv)
  if not 0.0 <= args.smoothing < 1.0:
    parser.error(f'--smoothing={args.smoothing} must lie in [0, 1)')
  return args


def main(argv: list[str] | None = None) -> None:
  """Writes the report of the command line's workdirs; a bad workdir exits with one line and status 2."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  with cli.one_line_errors(PROGRAM):
    paths = write_report(args.workdirs, args.out, args.smoothing)
  with open(paths[0]) as f:
    print(f.read())
  print('Wrote ' + ', '.join(paths))


if __name__ == '__main__':
  main()
