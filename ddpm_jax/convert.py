"""diffusers folders in and out: import released UNet2DModel weights as a workdir, export a run to DDPMPipeline.

  python -m ddpm_jax.convert import --source=google/ddpm-cifar10-32 --workdir=runs/ddpm_cifar10
  python -m ddpm_jax.convert export --workdir=runs/cosine_mae --out=exports/cosine_mae [--params=raw]

In Python: `from_diffusers(path_or_id) -> (config, params)` and `to_diffusers(config, params, out_dir)`.
Weights are data, never code: .safetensors first, a .bin only through torch.load(weights_only=True),
and nothing else of a downloaded folder is run. A source this U-Net can't express, a missing path,
a file of the wrong kind or a Hub id that can't be had offline is one line, and nothing is written.
"""
import json
import os
import re
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from ddpm_jax import diffusers_layout, diffusers_scheduler, errors
from ddpm_jax import workdir as workdir_lib
from ddpm_jax.core.models.unet import UNet, UNetConfig

WEIGHT_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
# What a DDPM pipeline needs from the Hub: configs and weights; never code or other variants.
HUB_PATTERNS = ['model_index.json', 'config.json', 'scheduler_config.json', *WEIGHT_FILES,
                'unet/config.json', *(f'unet/{name}' for name in WEIGHT_FILES), 'scheduler/scheduler_config.json']
_HUB_ID = re.compile(r'[A-Za-z0-9][\w.-]*/[\w.-]+')
_MODEL_KEYS = ('base_channels', 'channel_mults', 'num_res_blocks', 'attention_resolutions', 'num_heads', 'dropout',
               'num_groups', 'norm_eps')


def fetch_from_hub(repo_id: str, cache_dir: str | None = None) -> str:
  """Returns the local snapshot folder of a Hub repo (from the cache when HF_HUB_OFFLINE=1), configs and weights only."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  try:
    return huggingface_hub.snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, cache_dir=cache_dir)
  except Exception as e:  # pylint: disable=broad-except  # offline, unknown, gated or unreachable: one line
    where = cache_dir or constants.HF_HUB_CACHE
    offline = ' (HF_HUB_OFFLINE is set: it must be in the local cache, ' + where + ')' if constants.HF_HUB_OFFLINE \
        else f' (cache: {where})'
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise FileNotFoundError(f'--source={repo_id}: cannot fetch it from the Hub{offline}: {reason}') from None


def locate(source: str, cache_dir: str | None = None) -> tuple[str, str | None]:
  """Returns (the folder with the model's config.json and weights, the scheduler config path or None)."""
  if not os.path.exists(source):
    if os.path.isabs(source) or source.startswith('.') or not _HUB_ID.fullmatch(source):
      raise FileNotFoundError(f'--source={source}: no such file or folder, and not a Hub id (owner/name)')
    source = fetch_from_hub(source, cache_dir)
  if not os.path.isdir(source):
    raise ValueError(f'--source={source} is a file; give the diffusers folder that holds config.json or unet/')
  for model_dir, scheduler in ((os.path.join(source, 'unet'), os.path.join(source, 'scheduler',
                                                                            'scheduler_config.json')),
                               (source, os.path.join(source, 'scheduler_config.json'))):
    if os.path.isfile(os.path.join(model_dir, 'config.json')):
      return model_dir, scheduler if os.path.isfile(scheduler) else None
  raise FileNotFoundError(f'--source={source} holds neither unet/config.json (a diffusers pipeline) nor '
                          'config.json (a diffusers model folder)')


def read_json(path: str) -> dict:
  """Returns a JSON file's object; a file that isn't one is a one-line ValueError."""
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise ValueError(f'{path} is not a JSON config ({e})') from None
  if not isinstance(value, dict):
    raise ValueError(f'{path} is not a JSON config (it holds a {type(value).__name__}, not an object)')
  return value


def load_state_dict(model_dir: str) -> dict:
  """Returns the folder's weights as {name: float32 numpy}: the .safetensors file, else the .bin (tensors only)."""
  import torch  # pylint: disable=g-import-not-at-top  # reads .bin files and bfloat16 safetensors
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  for name in WEIGHT_FILES:
    path = os.path.join(model_dir, name)
    if not os.path.isfile(path):
      continue
    try:
      # weights_only: a pickle that holds anything but tensors is refused, never run.
      tensors = load_file(path) if name.endswith('.safetensors') else \
          torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except  # a damaged or foreign file: one line
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ValueError(f'{path} is not a readable {name.rsplit(".", 1)[1]} weights file ({reason})') from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
      raise ValueError(f'{path} does not hold a state dict of tensors')
    return {k: v.to(torch.float32).numpy() for k, v in tensors.items()}
  raise FileNotFoundError(f'{model_dir} has no weights: expected {" or ".join(WEIGHT_FILES)}')


def abstract_params(unet: UNetConfig, image_size: int) -> dict:
  """Returns the shapes of the U-Net's params at image_size, without computing them."""
  model = UNet(unet)
  x, t = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32), jax.ShapeDtypeStruct((1,), np.int32)
  return jax.eval_shape(lambda x, t: model.init(jax.random.key(0), x, t), x, t)['params']


def from_diffusers(source: str, base_config: ml_collections.ConfigDict | None = None,
                   cache_dir: str | None = None) -> tuple[ml_collections.ConfigDict, dict]:
  """Returns (a config like configs/default.py with the source's model and diffusion, its params as numpy).

  `source` is a diffusers pipeline or model folder or a Hub id; base_config (default:
  configs/default.py's) gives every section the source does not describe.
  """
  model_dir, scheduler_path = locate(source, cache_dir)
  unet, image_size = diffusers_layout.unet_config_from_diffusers(read_json(os.path.join(model_dir, 'config.json')))
  settings = diffusers_scheduler.settings_from_scheduler(read_json(scheduler_path) if scheduler_path else None)
  if scheduler_path is None:
    logging.warning('%s has no scheduler config: assuming DDPMScheduler\'s defaults (linear, T=1000, eps).', source)
  config = ml_collections.ConfigDict(base_config.to_dict()) if base_config else workdir_lib.default_config()
  for key in _MODEL_KEYS:
    config.model[key] = getattr(unet, key)
  config.data.image_size = image_size
  for key, value in settings.items():
    section, name = key.split('.')
    config[section][name] = value
  config.eval.sampling_steps = min(config.eval.sampling_steps, config.diffusion.num_timesteps)
  params = diffusers_layout.params_from_diffusers(load_state_dict(model_dir), abstract_params(unet, image_size),
                                                  len(unet.channel_mults))
  return config, params


def unet_config(config: ml_collections.ConfigDict) -> UNetConfig:
  """Returns the UNetConfig of a config's model section."""
  return UNetConfig(**config.model)


def model_index() -> dict:
  """Returns the model_index.json of a DDPMPipeline."""
  return {'_class_name': 'DDPMPipeline', '_diffusers_version': '0.30.0', 'scheduler': ['diffusers', 'DDPMScheduler'],
          'unet': ['diffusers', 'UNet2DModel']}


def write_json(path: str, value: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write('\n')


def to_diffusers(config: ml_collections.ConfigDict, params, out_dir: str, card: str | None = None) -> str:
  """Writes a DDPMPipeline folder (unet/, scheduler/, model_index.json, README.md) of the params; returns out_dir."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  unet = unet_config(config)
  unet_json = diffusers_layout.unet_config_to_diffusers(unet, config.data.image_size)
  scheduler_json = diffusers_scheduler.scheduler_from_settings(config)
  state_dict = diffusers_layout.params_to_diffusers(jax.device_get(params), len(unet.channel_mults))
  write_json(os.path.join(out_dir, 'unet', 'config.json'), {**unet_json, '_diffusers_version': '0.30.0'})
  save_file(state_dict, os.path.join(out_dir, 'unet', 'diffusion_pytorch_model.safetensors'),
            metadata={'format': 'pt'})
  write_json(os.path.join(out_dir, 'scheduler', 'scheduler_config.json'),
             {**scheduler_json, '_diffusers_version': '0.30.0'})
  write_json(os.path.join(out_dir, 'model_index.json'), model_index())
  with open(os.path.join(out_dir, 'README.md'), 'w') as f:
    f.write(card or model_card(config, None, {}, diffusers_layout.count(state_dict)))
  return out_dir


def model_card(config: ml_collections.ConfigDict, step: int | None, metrics: dict, num_params: int) -> str:
  """Returns the README.md of an exported model: what it is, how it was trained, its last evaluation."""
  d, m = config.diffusion, config.model
  lines = ['---', 'library_name: diffusers', 'tags: [ddpm, unconditional-image-generation, ddpm_jax]', '---', '',
           '# DDPM U-Net trained with ddpm_jax', '',
           f'A {num_params:,}-parameter U-Net (base {m.base_channels} channels, multipliers '
           f'{tuple(m.channel_mults)}, attention at {tuple(m.attention_resolutions)} px) on `{config.data.dataset}` at '
           f'{config.data.image_size}x{config.data.image_size}.', '',
           f'- diffusion: {d.schedule} schedule, T={d.num_timesteps}, predicts {d.prediction}, {d.loss} loss',
           f'- training: {"step " + str(step) if step is not None else "imported weights"} of '
           f'{config.training.num_steps}, batch {config.training.batch_size}, lr {config.training.learning_rate}, '
           f'EMA {config.training.ema_decay}, seed {config.seed}', '',
           '```python', 'from diffusers import DDPMPipeline', 'pipeline = DDPMPipeline.from_pretrained(PATH)',
           'images = pipeline(batch_size=16).images', '```', '']
  if metrics:
    lines += [f'## Last evaluation (step {metrics.get("step", step)})', '', '| metric | value |', '|---|---|']
    lines += [f'| {k} | {v:.4g} |' for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and k != 'step']
    lines.append('')
  return '\n'.join(lines)


COMMANDS = ('import', 'export')
FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the CLI's flags (only when run as a program: importing the API defines none)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('source', None, 'import: a diffusers pipeline or model folder, or a Hub id (owner/name).')
  flags.DEFINE_string('workdir', None, 'import: the new workdir to write; export: the run to read.')
  config_flags.DEFINE_config_file('config', None, 'import: the config whose data, training, sampling and eval '
                                  'sections the workdir gets (default: configs/default.py).', lock_config=False)
  flags.DEFINE_string('out', None, 'export: the folder to write (new or empty, or an earlier export with --overwrite).')
  flags.DEFINE_integer('checkpoint_step', None, 'export: the checkpoint to read (default: the newest intact one).')
  flags.DEFINE_enum('params', 'ema', ['ema', 'raw'], 'export: the EMA params (default) or the raw ones.')
  flags.DEFINE_bool('overwrite', False, 'export: replace an earlier export at --out.')
  flags.DEFINE_string('cache_dir', None, 'import: the Hugging Face cache to use (default: HF_HUB_CACHE).')
  flags.DEFINE_bool('traceback', False, 'Show the full traceback of an input error.')


def run(command: str) -> str:
  """Runs `import` or `export` with the flags; returns what it wrote."""
  from ddpm_jax import convert_workdir  # pylint: disable=g-import-not-at-top  # it imports this module
  required = {'import': ('source', 'workdir'), 'export': ('workdir', 'out')}[command]
  missing = [f'--{name}' for name in required if not FLAGS[name].value]
  if missing:
    raise ValueError(f'{command} needs {" and ".join(missing)}')
  if command == 'import':
    config = convert_workdir.import_to_workdir(FLAGS.source, FLAGS.workdir, FLAGS.config, FLAGS.cache_dir)
    print(f'Imported {FLAGS.source} into {FLAGS.workdir} (checkpoint 0, {config.data.image_size} px, '
          f'{config.diffusion.schedule} schedule, T={config.diffusion.num_timesteps}, '
          f'{config.diffusion.prediction} prediction).')
    return FLAGS.workdir
  out = convert_workdir.export_workdir(FLAGS.workdir, FLAGS.out, FLAGS.checkpoint_step, FLAGS.params, FLAGS.overwrite)
  print(f'Exported {FLAGS.workdir} ({FLAGS.params} params) to {out}: DDPMPipeline.from_pretrained({out!r})')
  return out


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    print(f'ddpm_jax.convert: error: give one command, {" or ".join(COMMANDS)} (got {argv[1:]})', file=sys.stderr)
    sys.exit(2)
  try:
    run(argv[1])
  except errors.StorageError as e:
    if FLAGS.traceback:
      raise
    print(f'ddpm_jax.convert: error: {e}', file=sys.stderr)
    sys.exit(1)
  except (ValueError, FileNotFoundError, PermissionError) as e:
    if FLAGS.traceback:
      raise
    print(f'ddpm_jax.convert: error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  define_flags()
  app.run(main)
