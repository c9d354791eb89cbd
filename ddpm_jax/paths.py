"""Every path the project writes: the files inside a workdir (`Workdir`) and the cache folders (`cache_root`).

The standard library only: the CLIs, the reports and the writers all read it, none pays for an import.
"""
import dataclasses
import glob
import os
import re

EVAL_FILE = re.compile(r'step_(\d+)\.json')
GRID_FILE = re.compile(r'step_(\d+)\.png')
# Post-hoc EMA: a profile's snapshot (phema/) and an evaluation of a reconstruction (eval/phema/); group 2 is sigma_rel.
PHEMA_SNAPSHOT_FILE = re.compile(r'step_(\d+)_sigma_(\d[0-9.e-]*)\.npz')
PHEMA_EVAL_FILE = re.compile(r'step_(\d+)_sigma_(\d[0-9.e-]*)\.json')


def sigma_rel_name(sigma_rel: float) -> str:
  """Returns sigma_rel as file names hold it: Python's shortest repr, which reads back to the same float."""
  return repr(float(sigma_rel))


def cache_root() -> str:
  """Returns ~/.cache/ddpm_jax, or $XDG_CACHE_HOME/ddpm_jax: where compiled programs, resized data and features go."""
  return os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'ddpm_jax')


@dataclasses.dataclass(frozen=True)
class Workdir:
  """A run's folder and the name of everything in it."""
  root: str

  @property
  def config_file(self) -> str:
    """config.json: the config the checkpoints were trained (or imported) with."""
    return os.path.join(self.root, 'config.json')

  def kept_config(self, stamp: str) -> str:
    """config.<UTC time>.json: a config.json that a changed config replaced."""
    return os.path.join(self.root, f'config.{stamp}.json')

  @property
  def checkpoints(self) -> str:
    """checkpoints/<step>/: Orbax's checkpoints (absolute: Orbax wants it so)."""
    return os.path.join(os.path.abspath(self.root), 'checkpoints')

  @property
  def corrupt_checkpoints(self) -> str:
    """checkpoints_corrupt/<step>/: damaged checkpoints, set aside, never deleted."""
    return os.path.join(os.path.abspath(self.root), 'checkpoints_corrupt')

  @property
  def samples(self) -> str:
    """samples/: grids (step_<N>.png) and --mode=sample's PNG and .npz files."""
    return os.path.join(self.root, 'samples')

  @property
  def evals(self) -> str:
    """eval/: one step_<N>.json per evaluation."""
    return os.path.join(self.root, 'eval')

  def eval_file(self, step: int) -> str:
    """eval/step_<N>.json."""
    return os.path.join(self.evals, f'step_{step}.json')

  @property
  def phema(self) -> str:
    """phema/: the post-hoc EMA profiles' snapshots, one step_<N>_sigma_<s>.npz each."""
    return os.path.join(self.root, 'phema')

  def phema_snapshot(self, step: int, sigma_rel: float) -> str:
    """phema/step_<N>_sigma_<s>.npz."""
    return os.path.join(self.phema, f'step_{step}_sigma_{sigma_rel_name(sigma_rel)}.npz')

  @property
  def phema_evals(self) -> str:
    """eval/phema/: evaluations of post-hoc EMA reconstructions (--config.eval.phema_sigma_rels)."""
    return os.path.join(self.evals, 'phema')

  def phema_eval_file(self, step: int, sigma_rel: float) -> str:
    """eval/phema/step_<N>_sigma_<s>.json."""
    return os.path.join(self.phema_evals, f'step_{step}_sigma_{sigma_rel_name(sigma_rel)}.json')

  @property
  def phema_record(self) -> str:
    """phema.json: in a workdir that `python -m ddpm_jax.phema` wrote, what it was reconstructed from."""
    return os.path.join(self.root, 'phema.json')

  @property
  def classes_json(self) -> str:
    """classes.json: a class-conditional run's class names, in label order."""
    return os.path.join(self.root, 'classes.json')

  @property
  def guidance_evals(self) -> str:
    """eval/guidance/: evaluations of a class-conditional run at each guidance scale (--config.eval.guidance_scales)."""
    return os.path.join(self.evals, 'guidance')

  def guidance_eval_file(self, step: int, guidance_scale: float) -> str:
    """eval/guidance/step_<N>_w_<w>.json."""
    return os.path.join(self.guidance_evals, f'step_{step}_w_{guidance_scale:g}.json')

  @property
  def wandb_run_id(self) -> str:
    """wandb_run_id.txt: the W&B run a resumed run continues."""
    return os.path.join(self.root, 'wandb_run_id.txt')

  def event_files(self) -> list[str]:
    """Returns the TensorBoard event files CLU's writer left in the workdir, oldest first."""
    return sorted(glob.glob(os.path.join(self.root, 'events.out.tfevents.*')))

  def has_run(self) -> list[str]:
    """Returns what marks the workdir as holding a run: config.json and a non-empty checkpoints/ ([] if neither)."""
    taken = ['config.json'] if os.path.exists(self.config_file) else []
    if os.path.isdir(self.checkpoints) and os.listdir(self.checkpoints):
      taken.append('checkpoints')
    return taken
