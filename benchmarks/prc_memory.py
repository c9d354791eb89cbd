r"""Peak host memory of precision/recall as the paper protocol computes it, on random 2048-d features.

Each configuration runs in a process of its own (peak RSS is per process): it draws the samples' and the
reference's features as float64, as an evaluation holds them (the samples' FeatureAccumulator, the
reference's cache), then computes precision and recall, and reports the peak RSS above the features
and the seconds. Configurations, --configs=PATH:SAMPLES:REFERENCE[:ROWS],...:

  ours    eval_bridge.fidelity.precision_recall: float32 features, the reference subsampled to the sample
          count, distances ROWS rows at a time (torch-fidelity's save_cpu_ram; default fidelity.PRC_BATCH_SIZE)
  before  what the prc plug-in did before: torch-fidelity's default path, float64 features, the whole
          reference, full distance matrices (SAMPLES^2 + REFERENCE^2 + SAMPLES x REFERENCE float64)

Prints a table and appends it to BENCHMARKS.md with date, machine, versions and the command. Run from the
repository root:

  python -m benchmarks.prc_memory  # the paper protocol's 50,000 samples against a 100,000-image reference
  python -m benchmarks.prc_memory --configs=ours:2000:4000,before:2000:4000 --output=/dev/null  # a quick look
"""
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

from benchmarks import machine_info

_CONFIGS = flags.DEFINE_list('configs', ['before:10000:20000', 'ours:10000:20000', 'ours:50000:100000'],
                             'PATH:SAMPLES:REFERENCE[:ROWS] configurations, each in a process of its own.')
_WORKER = flags.DEFINE_string('worker', None, 'Internal: run one configuration and print its JSON.')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to.')


def peak_mib() -> float:
  """Returns this process's peak resident set size in MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(config: str) -> dict:
  """Returns the configuration's features' MiB, the peak MiB above them, the seconds and the result."""
  import numpy as np  # pylint: disable=g-import-not-at-top  # the parent process needs neither
  import torch  # pylint: disable=g-import-not-at-top
  from torch_fidelity import metric_prc  # pylint: disable=g-import-not-at-top
  from eval_bridge import fidelity  # pylint: disable=g-import-not-at-top
  path, num_samples, num_reference, *rows = config.split(':')
  rows = int(rows[0]) if rows else fidelity.PRC_BATCH_SIZE
  before_features = peak_mib()
  rng = np.random.default_rng(0)
  generated = rng.standard_normal((int(num_samples), fidelity.FEATURE_DIM))
  reference = rng.standard_normal((int(num_reference), fidelity.FEATURE_DIM)) + 0.1
  with_features = peak_mib()
  start = time.perf_counter()
  if path == 'ours':
    result = fidelity.precision_recall(generated, reference, batch_size=rows)
  elif path == 'before':
    rows = 10000  # torch-fidelity's prc_batch_size; save_cpu_ram=False keeps every matrix whole anyway
    result = metric_prc.prc_features_to_metric(torch.from_numpy(generated), torch.from_numpy(reference),
                                               prc_neighborhood=fidelity.PRC_NEIGHBORHOOD, verbose=False)
  else:
    raise ValueError(f'unknown path {path!r} in {config!r}; use ours or before')
  return {'config': config, 'path': path, 'samples': int(num_samples), 'reference': int(num_reference), 'rows': rows,
          'features_mib': with_features - before_features, 'peak_above_mib': peak_mib() - with_features,
          'peak_mib': peak_mib(), 'seconds': time.perf_counter() - start,
          'precision': result['precision'], 'recall': result['recall']}


def run_worker(config: str) -> dict:
  """Returns measure(config) as run in a fresh process, or a row saying how the process ended."""
  process = subprocess.run([sys.executable, '-m', 'benchmarks.prc_memory', f'--worker={config}'],
                           capture_output=True, text=True)
  lines = [line for line in process.stdout.splitlines() if line.startswith('{')]
  if process.returncode or not lines:
    return {'config': config, 'error': f'exit {process.returncode}: {process.stderr.strip()[-200:]}'}
  return json.loads(lines[-1])


def versions() -> str:
  """Returns the versions the measurement ran on."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch_fidelity  # pylint: disable=g-import-not-at-top
  return (f'Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), '
          f'torch-fidelity {torch_fidelity.__version__}, numpy {np.__version__}')


def report(results: list[dict]) -> str:
  """Returns the Markdown section for BENCHMARKS.md."""
  lines = [f'## Precision/recall memory (paper protocol), {datetime.datetime.now().isoformat(timespec="seconds")}',
           '', f'- Command: `{" ".join(["python -m benchmarks.prc_memory", *sys.argv[1:]])}`',
           f'- Machine: {platform.platform()}; {machine_info.cpu_model()}; {os.cpu_count()} CPUs; '
           f'load average {machine_info.load_average()} (at the end)', f'- Versions: {versions()}',
           '- Random 2048-d features held as float64 (as an evaluation holds them); peak RSS of a process per row. '
           '`ours`: float32, reference subsampled to the sample count, distances a block of rows at a time; '
           "`before`: torch-fidelity's default (float64, whole reference, full distance matrices).", '',
           '| path | samples | reference | distance rows per block | features (MiB) | peak above features (MiB) '
           '| peak RSS (MiB) | seconds | precision | recall |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for row in results:
    if 'error' in row:
      lines.append(f'| {row["config"]} | | | | | | | | | {row["error"]} |')
      continue
    lines.append(f'| {row["path"]} | {row["samples"]:,} | {row["reference"]:,} | {row["rows"]:,} | '
                 f'{row["features_mib"]:,.0f} | {row["peak_above_mib"]:,.0f} | {row["peak_mib"]:,.0f} | '
                 f'{row["seconds"]:,.1f} | {row["precision"]:.4f} | {row["recall"]:.4f} |')
  return '\n'.join(lines) + '\n\n'


def main(argv):
  del argv
  if _WORKER.value:
    print(json.dumps(measure(_WORKER.value)))
    return
  results = []
  for config in _CONFIGS.value:
    results.append(run_worker(config))
    print(results[-1], flush=True)
  section = report(results)
  print(section)
  with open(_OUTPUT.value, 'a') as f:
    f.write(section)


if __name__ == '__main__':
  app.run(main)
