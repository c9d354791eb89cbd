"""diffusers folders in and out (the library behind `python -m ddpm_jax.convert`).

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

import jax
import numpy as np
from absl import logging

from ddpm_jax.config import convert, schema
from ddpm_jax.core.models.unet import UNet, UNetConfig
from ddpm_jax.interop import diffusers_layout
from ddpm_jax.interop import diffusers_scheduler
from ddpm_jax.interop import diffusers_weights

WEIGHT_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
# What a DDPM pipeline needs from the Hub: configs and weights; never code or other variants.
HUB_PATTERNS = ['model_index.json', 'config.json', 'scheduler_config.json', *WEIGHT_FILES,
                'unet/config.json', *(f'unet/{name}' for name in WEIGHT_FILES), 'scheduler/scheduler_config.json']
_HUB_ID = re.compile(r'[A-Za-z0-9][\w.-]*/[\w.-]+')
_MODEL_KEYS = ('base_channels', 'channel_mults', 'num_res_blocks', 'attention_resolutions', 'num_heads',
               'num_head_channels', 'dropout', 'num_groups', 'norm_eps', 'scale_shift_norm', 'resblock_updown',
               'time_embedding', 'num_classes')


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


def from_diffusers(source: str, base_config=None, cache_dir: str | None = None) -> tuple[schema.Config, dict]:
  """Returns (the typed config of the source's model and diffusion, its params as numpy).

  `source` is a diffusers pipeline or model folder or a Hub id; base_config (a Config or a
  ConfigDict; default: every key at its default) gives every section the source does not describe.
  """
  model_dir, scheduler_path = locate(source, cache_dir)
  unet_json = read_json(os.path.join(model_dir, 'config.json'))
  unet, image_size = diffusers_layout.unet_config_from_diffusers(unet_json)
  settings = diffusers_scheduler.settings_from_scheduler(read_json(scheduler_path) if scheduler_path else None)
  if scheduler_path is None:
    logging.warning('%s has no scheduler config: assuming DDPMScheduler\'s defaults (linear, T=1000, eps).', source)
  config = convert.from_configdict(base_config) if base_config is not None else schema.Config()
  values = {f'model.{key}': getattr(unet, key) for key in _MODEL_KEYS}
  values['data.image_size'] = image_size
  values.update(settings)
  # The evaluation samples as the scheduler says too, in at most T steps.
  values.update({f'eval.{key}': value for key, value in settings.items()
                 if key in ('sampling.variance', 'sampling.clip_denoised')})
  values['eval.sampling.num_steps'] = min(config.eval.sampling.num_steps, settings['diffusion.num_timesteps'])
  config = convert.with_values(config, values)
  state_dict = load_state_dict(model_dir)
  if unet.num_classes and not diffusers_layout.learned_null_class(unet_json):
    # Not one of our exports: no row was trained as "no class", so guided sampling has nothing to guide from.
    logging.warning('%s: %d classes and no null class; guidance (sampling.guidance_scale != 1) needs a null class '
                    'this model never learned, so its row (id %d) is zeros.', source, unet.num_classes, unet.num_classes)
    state_dict = diffusers_weights.with_zero_null_class(state_dict)
  params = diffusers_weights.params_from_diffusers(state_dict, abstract_params(unet, image_size),
                                                  len(unet.channel_mults))
  return config, params


def unet_config(config: schema.Config) -> UNetConfig:
  """Returns the UNetConfig of a config's model section."""
  return config.model


def model_index() -> dict:
  """Returns the model_index.json of a DDPMPipeline."""
  return {'_class_name': 'DDPMPipeline', '_diffusers_version': '0.30.0', 'scheduler': ['diffusers', 'DDPMScheduler'],
          'unet': ['diffusers', 'UNet2DModel']}


def write_json(path: str, value: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write('\n')


def to_diffusers(config: schema.Config, params, out_dir: str, card: str | None = None) -> str:
  """Writes a DDPMPipeline folder (unet/, scheduler/, model_index.json, README.md) of the params; returns out_dir."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  unet = unet_config(config)
  unet_json = diffusers_layout.unet_config_to_diffusers(unet, config.data.image_size)
  scheduler_json = diffusers_scheduler.scheduler_from_settings(config)
  state_dict = diffusers_weights.params_to_diffusers(jax.device_get(params), len(unet.channel_mults))
  write_json(os.path.join(out_dir, 'unet', 'config.json'), {**unet_json, '_diffusers_version': '0.30.0'})
  save_file(state_dict, os.path.join(out_dir, 'unet', 'diffusion_pytorch_model.safetensors'),
            metadata={'format': 'pt'})
  write_json(os.path.join(out_dir, 'scheduler', 'scheduler_config.json'),
             {**scheduler_json, '_diffusers_version': '0.30.0'})
  write_json(os.path.join(out_dir, 'model_index.json'), model_index())
  with open(os.path.join(out_dir, 'README.md'), 'w') as f:
    f.write(card or model_card(config, None, {}, diffusers_weights.count(state_dict)))
  return out_dir


def model_card(config: schema.Config, step: int | None, metrics: dict, num_params: int, *, params: str = 'ema',
               newest_step: int | None = None) -> str:
  """Returns the README.md of an exported model: what it is, how it was trained, the step exported, its last scores.

  `newest_step`, when it is not `step`, is the newest checkpoint, which could not be read (the export fell back).
  """
  d, m = config.diffusion, config.model
  kind = 'class-conditional' if m.num_classes else 'unconditional'
  lines = ['---', 'library_name: diffusers', f'tags: [ddpm, {kind}-image-generation, ddpm_jax]', '---', '',
           '# DDPM U-Net trained with ddpm_jax', '',
           f'A {num_params:,}-parameter U-Net (base {m.base_channels} channels, multipliers '
           f'{tuple(m.channel_mults)}, attention at {tuple(m.attention_resolutions)} px) on `{config.data.dataset}` at '
           f'{config.data.image_size}x{config.data.image_size}.', '',
           f'- diffusion: {d.schedule} schedule, T={d.num_timesteps}, predicts {d.prediction}, {d.loss} loss',
           f'- training: {config.training.num_steps} steps, batch {config.training.batch_size}, lr '
           f'{config.training.learning_rate}, EMA {config.training.ema_decay}, seed {config.seed}',
           f'- exported: {exported(step, params, newest_step)}', *architecture_lines(m), '',
           '```python', 'from diffusers import DDPMPipeline', 'pipeline = DDPMPipeline.from_pretrained(PATH)',
           'images = pipeline(batch_size=16).images' if not m.num_classes else
           'eps = pipeline.unet(x, t, class_labels=labels).sample  # DDPMPipeline passes no labels', '```', '']
  return '\n'.join(lines + evaluation_section(metrics, step))


def architecture_lines(model: UNetConfig) -> list[str]:
  """Returns the card's lines on the ADM options the U-Net uses and its classes (none for the DDPM network)."""
  options = [name for name, on in (('scale-shift norm', model.scale_shift_norm),
                                   ('residual up/downsampling', model.resblock_updown),
                                   (f'{model.num_head_channels}-channel heads', model.num_head_channels != -1),
                                   ('ADM timestep embedding', model.time_embedding == 'adm')) if on]
  lines = [f'- ADM options: {", ".join(options)}'] if options else []
  if model.num_classes:
    lines.append(f'- classes: {model.num_classes}, plus the null class (id {model.num_classes}, the last row of '
                 f'class_embedding; config key {diffusers_layout.NULL_CLASS_KEY}) for classifier-free guidance')
  return lines


def exported(step: int | None, params: str, newest_step: int | None) -> str:
  """Returns what the export holds, e.g. 'the EMA params of step 1000', saying so when it fell back past the newest."""
  if step is None:
    return 'imported weights'
  what = f'the {"EMA" if params == "ema" else "raw (non-EMA)"} params of step {step}'
  if newest_step is not None and newest_step != step:
    what += (f' (the newest checkpoint, step {newest_step}, could not be read and was set aside in '
             'checkpoints_corrupt/; this is the newest intact one)')
  return what


def evaluation_section(metrics: dict, step: int | None) -> list[str]:
  """Returns the card's lines of an evaluation: its metrics alone in the table, how they were scored under it."""
  from eval_bridge import metrics as metrics_lib  # pylint: disable=g-import-not-at-top  # the registry: no torch
  keys = [key for cls in metrics_lib.REGISTRY.values() if all(k in metrics for k in cls.keys) for key in cls.keys]
  if not keys:
    return []
  standin = metrics.get('standin_inception', False)
  inception = {key for cls in metrics_lib.REGISTRY.values() if cls.needs_inception for key in cls.keys}
  lines = [f'## Last evaluation (step {metrics.get("step", step)})', '', '| metric | value |', '|---|---|']
  lines += [f'| {key}{" (stand-in Inception)" if standin and key in inception else ""} | {metrics[key]:.4g} |'
            for key in keys]
  how = [f'{metrics["num_samples"]} samples' if 'num_samples' in metrics else '',
         f'{metrics["sampler"]} {metrics.get("sampling_steps", "")} steps' if 'sampler' in metrics else '',
         f'against {metrics["reference_split"]} ({metrics.get("num_reference", "?")} images)'
         if 'reference_split' in metrics else '',
         f'{metrics["protocol"]} protocol' if 'protocol' in metrics else '']
  lines += ['', f'Scored from {", ".join(part for part in how if part)}.' if any(how) else '']
  if standin:
    lines.append('**Stand-in Inception weights** (random, for smoke tests; SHA-256 '
                 f'{metrics.get("inception_sha256", "?")[:16]}…): these FID/KID values compare with no real score.')
  return [*lines, '']
