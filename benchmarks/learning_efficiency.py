r"""Which recipe learns real images fastest? Patches of scikit-image's photographs, a fixed step budget per recipe.

Data: the colour photographs that ship inside scikit-image (`skimage.data`, no download), each scaled so its
shorter side is 8x the patch size, then cut into overlapping patches (stride = patch / 4). Split by source image:

  train:    astronaut, chelsea, immunohistochemistry, hubble_deep_field, retina, stereo_motorcycle (left and right)
  held-out: coffee, rocket

Each recipe trains the quickstart's U-Net (configs/quickstart.py, the real trainer: typed config -> run.build ->
the jitted on-device-data train step) for --steps steps on the train patches, then draws --num_samples samples
with the config's sampler. Score: the Frechet distance in pixel space (the patches flattened, values in [0, 1])
between the samples and as many held-out patches, divided by the same distance between as many *train* patches
and the held-out ones: the floor a model that reproduced the training set would reach. 1.0 = at the floor.

Why pixel space: the question is how fast a recipe fits real image statistics (colour, contrast, edges, noise),
which the pixel mean and covariance carry; a learned extractor trained elsewhere would add its own bias, and
the stand-in Inception is random. The held-out photographs differ in content from the training ones, so a model can
come closer to them than the training patches are (a ratio under 1); the fit score, against train patches not
in the reference sample, has a true floor. At 16 px the patches have 768 dimensions; at 32 px they are pooled 2x2 to
16 px first, so that 500-1000 samples estimate the covariance as well at both sizes.

Every recipe sees the same patches and the same number of steps; each row is the mean (and spread) over seeds.
Results are appended to a JSON file as each run ends, so an interrupted benchmark resumes where it stopped.

  pip install -e '.[bench]'  # scikit-image
  python -m benchmarks.learning_efficiency --image_size=16 --steps=1500 --seeds=0,1
  python -m benchmarks.learning_efficiency --image_size=32 --steps=1500 --seeds=0,1 --recipes=today,v_min_snr
"""
import dataclasses
import datetime
import json
import math
import os
import platform
import time

import jax
import numpy as np
from absl import app, flags
from scipy import linalg

from benchmarks import machine_info
from ddpm_jax.config import convert
from ddpm_jax.core import device_data, keys
from ddpm_jax.run import build as build_lib

_SIZE = flags.DEFINE_integer('image_size', 16, 'Patch side (16 or 32).')
_STEPS = flags.DEFINE_integer('steps', 1500, 'Train steps per recipe.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1'], 'Seeds (model init, batches, noise) per recipe.')
_RECIPES = flags.DEFINE_list('recipes', None, 'Recipes to run (default: all of RECIPES).')
_SAMPLES = flags.DEFINE_integer('num_samples', 500, 'Samples (and held-out / train patches) per score.')
_RESULTS = flags.DEFINE_string('results', '', 'JSON of finished runs (default: /tmp/learning_efficiency_<size>.json).')
_SAMPLES_DIR = flags.DEFINE_string('samples_dir', '/tmp/learning_efficiency_samples', 'Where each run\'s samples '
                                   'are kept (uint8 .npy), to rescore without retraining.')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the table is appended to ("" = none).')

TRAIN_IMAGES = ('astronaut', 'chelsea', 'immunohistochemistry', 'hubble_deep_field', 'retina', 'motorcycle_left',
                'motorcycle_right')
HELD_OUT_IMAGES = ('coffee', 'rocket')

# What each recipe changes on configs/quickstart.py as it was at 2b401f1 (TODAY).
TODAY = {'diffusion.prediction': 'eps', 'diffusion.loss_weighting': 'none', 'training.learning_rate': 2e-3,
         'training.ema_decay': 0.995, 'diffusion.logsnr_shift': 0.0,
         # Photographs have no classes: unconditional, as the quickstart was then.
         'model.num_classes': 0, 'sampling.guidance_scale': 1.0, 'eval.guidance_scale': 1.0}
# A recipe's logsnr_shift of SIMPLE_DIFFUSION_SHIFT is simple diffusion's 2 ln(64 / image_size) at the run's size.
SIMPLE_DIFFUSION_SHIFT = 'simple_diffusion'
RECIPES = {  # in the order they run: the most informative first
    'today': {},
    'eps_lr1e-3_ema999': {'training.learning_rate': 1e-3, 'training.ema_decay': 0.999},
    'eps_min_snr': {'diffusion.loss_weighting': 'min_snr', 'training.learning_rate': 1e-3,
                    'training.ema_decay': 0.999},
    'x0': {'diffusion.prediction': 'x0', 'training.learning_rate': 1e-3, 'training.ema_decay': 0.999},
    'x0_min_snr': {'diffusion.prediction': 'x0', 'diffusion.loss_weighting': 'min_snr',
                   'training.learning_rate': 1e-3, 'training.ema_decay': 0.999},
    'v': {'diffusion.prediction': 'v', 'training.learning_rate': 1e-3, 'training.ema_decay': 0.999},
    'v_min_snr_lr2e-3_ema995': {'diffusion.prediction': 'v', 'diffusion.loss_weighting': 'min_snr'},
    'v_min_snr': {'diffusion.prediction': 'v', 'diffusion.loss_weighting': 'min_snr', 'training.learning_rate': 1e-3,
                  'training.ema_decay': 0.999},
    'v_lr2e-3_ema995': {'diffusion.prediction': 'v'},
    'v_edm': {'diffusion.prediction': 'v', 'diffusion.loss_weighting': 'edm', 'training.learning_rate': 1e-3,
              'training.ema_decay': 0.999},
    'v_shift': {'diffusion.prediction': 'v', 'diffusion.logsnr_shift': SIMPLE_DIFFUSION_SHIFT,
                'training.learning_rate': 1e-3, 'training.ema_decay': 0.999},
    'v_edm_shift': {'diffusion.prediction': 'v', 'diffusion.loss_weighting': 'edm',
                    'diffusion.logsnr_shift': SIMPLE_DIFFUSION_SHIFT, 'training.learning_rate': 1e-3,
                    'training.ema_decay': 0.999},
    'x0_shift': {'diffusion.prediction': 'x0', 'diffusion.logsnr_shift': SIMPLE_DIFFUSION_SHIFT,
                 'training.learning_rate': 1e-3, 'training.ema_decay': 0.999},
    'v_min_snr_lr5e-4': {'diffusion.prediction': 'v', 'diffusion.loss_weighting': 'min_snr',
                         'training.learning_rate': 5e-4, 'training.ema_decay': 0.999},
}


def photograph(name: str) -> np.ndarray:
  """Returns one of scikit-image's colour photographs as uint8 [H, W, 3]."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  if name.startswith('motorcycle_'):
    left, right, _ = data.stereo_motorcycle()
    return left if name.endswith('left') else right
  return getattr(data, name)()[..., :3]


def patches(names, patch: int) -> np.ndarray:
  """Returns uint8 [N, patch, patch, 3]: every photograph scaled to a shorter side of 8 patches, cut with stride patch/4."""
  from skimage import transform  # pylint: disable=g-import-not-at-top
  out = []
  for name in names:
    image = photograph(name)
    scale = 8 * patch / min(image.shape[:2])
    small = transform.rescale(image, scale, channel_axis=-1, anti_aliasing=True, preserve_range=True)
    small = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    stride = patch // 4
    for top in range(0, small.shape[0] - patch + 1, stride):
      for left in range(0, small.shape[1] - patch + 1, stride):
        out.append(small[top:top + patch, left:left + patch])
  return np.stack(out)


def features(images_uint8: np.ndarray) -> np.ndarray:
  """Returns float64 [N, 768]: the images at 16 px (2x2-pooled from 32), flattened, in [0, 1]."""
  x = images_uint8.astype(np.float64) / 255.0
  while x.shape[1] > 16:
    x = x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2, 3).mean(axis=(2, 4))
  return x.reshape(x.shape[0], -1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Returns the Frechet distance between Gaussians fitted to the rows of a and b."""
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = linalg.sqrtm(cov_a @ cov_b)
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real))


def subset(images: np.ndarray, count: int, seed: int) -> np.ndarray:
  """Returns `count` rows of images, drawn without replacement by a fixed seed."""
  return images[np.random.default_rng(seed).choice(len(images), count, replace=False)]


def config_of(recipe: str, seed: int, image_size: int, steps: int):
  """Returns the typed quickstart config with today's recipe, then the recipe's changes, at the given size."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  values = {**TODAY, **RECIPES[recipe]}
  if values['diffusion.logsnr_shift'] == SIMPLE_DIFFUSION_SHIFT:
    values['diffusion.logsnr_shift'] = 2 * math.log(64 / image_size)
  values = {**values, 'seed': seed, 'data.image_size': image_size, 'data.on_device': True,
            'training.num_steps': steps, 'model.attention_resolutions': (image_size // 4,)}
  return convert.with_values(convert.from_configdict(quickstart.get_config()), values)


@dataclasses.dataclass
class Run:
  recipe: str
  seed: int
  ratio: float  # to the held-out patches, over the train-vs-held-out floor
  distance: float
  floor: float
  fit_ratio: float  # to other train patches, over the train-vs-train floor
  train_s: float
  final_loss: float


def train_and_sample(config, train_images: np.ndarray, num_samples: int) -> tuple[np.ndarray, float, float]:
  """Returns (uint8 samples of the EMA params, seconds of steps 2..N, mean loss of the last 100 steps)."""
  components = build_lib.build(config)
  state = build_lib.initial_state(config, components)
  images = device_data.to_device(train_images, components.mesh)
  state, metrics = components.step_fn(state, images)  # the first step compiles: not timed
  losses, begun = [metrics['loss']], time.perf_counter()
  for _ in range(config.training.num_steps - 1):
    state, metrics = components.step_fn(state, images)
    losses.append(metrics['loss'])
  final_loss = float(np.mean(jax.device_get(losses[-100:])))
  train_s = time.perf_counter() - begun
  batches = components.sampler.batches(state.ema_params, lambda i: keys.grid_key(state.rng, i), num_samples, 100)
  samples = np.concatenate([np.asarray(jax.device_get(b)) for b in batches])
  return np.clip(np.rint((samples + 1) * 127.5), 0, 255).astype(np.uint8), train_s, final_loss


def load_results(path: str) -> list[Run]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [Run(**row) for row in json.load(f)]


def save_results(path: str, results: list[Run]) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump([dataclasses.asdict(r) for r in results], f, indent=1)
  os.replace(path + '.tmp', path)


def table(results: list[Run], recipes: list[str]) -> str:
  """Returns the markdown table: per recipe, both scores' means over seeds, each seed's, and the gain over today's."""
  rows = ['| recipe (changes to today\'s quickstart) | seeds | held-out ratio | per seed | vs today | fit ratio | '
          'per seed | vs today | final loss | train s |', '|---|---:|---:|---|---:|---:|---|---:|---:|---:|']
  by_recipe = {r: [x for x in results if x.recipe == r] for r in recipes}
  today = by_recipe.get('today') or []
  today_ratio = np.mean([x.ratio for x in today]) if today else float('nan')
  today_fit = np.mean([x.fit_ratio for x in today]) if today else float('nan')
  for recipe, runs in by_recipe.items():
    if not runs:
      continue
    ratio, fit = float(np.mean([x.ratio for x in runs])), float(np.mean([x.fit_ratio for x in runs]))
    changes = ', '.join(f'{k.split(".")[1]}={v}' for k, v in RECIPES[recipe].items()) or 'none'
    rows.append(f'| {recipe}: {changes} | {len(runs)} | {ratio:.2f} | {" / ".join(f"{x.ratio:.2f}" for x in runs)} | '
                f'{today_ratio / ratio:.2f}x | {fit:.2f} | {" / ".join(f"{x.fit_ratio:.2f}" for x in runs)} | '
                f'{today_fit / fit:.2f}x | {np.mean([x.final_loss for x in runs]):.4f} | '
                f'{np.mean([x.train_s for x in runs]):.0f} |')
  return '\n'.join(rows)


def main(argv):
  del argv
  size, steps, n = _SIZE.value, _STEPS.value, _SAMPLES.value
  recipes = _RECIPES.value or list(RECIPES)
  path = _RESULTS.value or f'/tmp/learning_efficiency_{size}px_{steps}.json'
  train_images, held_out = patches(TRAIN_IMAGES, size), patches(HELD_OUT_IMAGES, size)
  print(f'{len(train_images)} train patches, {len(held_out)} held-out patches of {size} px')
  held_out_features, train_features = features(subset(held_out, n, 0)), features(subset(train_images, n, 1))
  floor = frechet_distance(train_features, held_out_features)
  fit_floor = frechet_distance(features(subset(train_images, n, 2)), train_features)
  os.makedirs(_SAMPLES_DIR.value, exist_ok=True)
  results = load_results(path)
  for recipe in recipes:
    for seed in (int(s) for s in _SEEDS.value):
      if any(r.recipe == recipe and r.seed == seed for r in results):
        continue
      samples, train_s, final_loss = train_and_sample(config_of(recipe, seed, size, steps), train_images, n)
      np.save(os.path.join(_SAMPLES_DIR.value, f'{size}px_{steps}_{recipe}_{seed}.npy'), samples)
      distance = frechet_distance(features(samples), held_out_features)
      fit_ratio = frechet_distance(features(samples), train_features) / fit_floor
      results.append(Run(recipe, seed, distance / floor, distance, floor, fit_ratio, train_s, final_loss))
      save_results(path, results)
      print(f'{recipe} seed {seed}: ratio {distance / floor:.2f} (distance {distance:.2f}, floor {floor:.2f}), '
            f'fit ratio {fit_ratio:.2f}, '
            f'{train_s:.0f} s', flush=True)
  text = table(results, recipes)
  print(text)
  if _OUTPUT.value:
    command = 'python -m benchmarks.learning_efficiency ' + ' '.join(
        f'--{k}={v}' for k, v in (('image_size', size), ('steps', steps), ('seeds', ','.join(_SEEDS.value)),
                                  ('recipes', ','.join(recipes)), ('num_samples', n)))
    with open(_OUTPUT.value, 'a') as f:
      f.write(f'\n## Learning efficiency on real photographs, {size} px, {steps} steps '
              f'({datetime.date.today().isoformat()})\n\n'
              f'Machine: {machine_info.cpu_model()}, {os.cpu_count()} cores (load {machine_info.load_average()}); '
              f'Python {platform.python_version()}, jax {jax.__version__}. Command: `{command}`.\n'
              f'Train: {len(train_images)} patches of {", ".join(TRAIN_IMAGES)}; held-out: {len(held_out)} patches '
              f'of {", ".join(HELD_OUT_IMAGES)} (skimage.data). Held-out ratio: pixel-space Frechet distance of {n} '
              f'samples to {n} held-out patches / that of {n} train patches (floor {floor:.2f}; the held-out '
              f'photographs differ in content, so it can fall below 1). Fit ratio: the distance to {n} train '
              f'patches / that of another {n} train patches (floor {fit_floor:.2f}). Lower is better; '
              f'train s excludes the first (compiling) step.\n\n'
              f'{text}\n')


if __name__ == '__main__':
  app.run(main)
