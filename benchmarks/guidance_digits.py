r"""Does guidance work on real images? A class-conditional model of scanned digits, judged by a digit classifier.

Real labelled images that exist offline: scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels,
UCI's optdigits test set). They are written as a folder dataset of class subfolders (`folder:PATH`, the
loader's real code path: classes are the sorted subfolder names 0..9), upscaled to 16 px, and a
class-conditional quickstart-sized U-Net (configs/quickstart.py with the digits' 10 classes) trains on
them for --steps steps. A logistic-regression classifier, trained on 80% of the real digits at their own
8x8 and scored on the other 20% (its accuracy is the judge's quality), then reads the model's samples
(2x2-averaged back to 8x8) at each guidance scale w, 50 per class, and the table reports how often it
agrees with the requested label: ~10% would be chance (w = 0 ignores the label), more means the model
draws the class it was asked for.

  python -m benchmarks.guidance_digits                 # appends its table to BENCHMARKS.md
  python -m benchmarks.guidance_digits --steps=200 --output=/tmp/B.md   # a quick check of the script
"""
import datetime
import os
import platform
import sys
import tempfile
import time

from absl import app, flags
import jax
import numpy as np
from PIL import Image

from benchmarks import machine_info
from configs import quickstart
from ddpm_jax import data
from ddpm_jax.config import convert
from ddpm_jax.core import device_data, keys, sampler as sampler_lib
from ddpm_jax.run import build as build_lib

_STEPS = flags.DEFINE_integer('steps', 3000, 'Train steps.')
_SCALES = flags.DEFINE_list('scales', ['0', '1', '3'], 'Guidance scales w to sample at.')
_PER_CLASS = flags.DEFINE_integer('per_class', 50, 'Samples per class and scale.')
_SEED = flags.DEFINE_integer('seed', 0, 'The run\'s seed.')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the table is appended to ("" = none).')

IMAGE_SIZE = 16


def write_digit_folder(root: str) -> tuple[np.ndarray, np.ndarray]:
  """Writes sklearn's digits as root/<digit>/<i>.png (16 px RGB); returns the 8x8 images in [0, 1] and labels."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = digits.images / 16.0
  for index, (image, label) in enumerate(zip(images, digits.target)):
    grey = Image.fromarray(np.uint8(np.rint(image * 255))).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    os.makedirs(os.path.join(root, str(label)), exist_ok=True)
    grey.convert('RGB').save(os.path.join(root, str(label), f'{index}.png'))
  return images, digits.target


def to_8x8(images_uint8: np.ndarray) -> np.ndarray:
  """Returns float [N, 64] in [0, 1]: 16 px RGB images as grey 8x8, 2x2-averaged, flattened."""
  grey = images_uint8.astype(np.float64).mean(axis=-1) / 255.0
  return grey.reshape(len(grey), 8, 2, 8, 2).mean(axis=(2, 4)).reshape(len(grey), 64)


def train_judge(images: np.ndarray, labels: np.ndarray):
  """Returns (a logistic-regression digit classifier fitted on 80% of the real digits, its accuracy on the rest)."""
  from sklearn import linear_model, model_selection  # pylint: disable=g-import-not-at-top
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      images.reshape(len(images), 64), labels, test_size=0.2, random_state=0, stratify=labels)
  judge = linear_model.LogisticRegression(max_iter=2000).fit(x_train, y_train)
  return judge, float(judge.score(x_test, y_test))


def config_for(folder: str, steps: int, seed: int):
  """Returns the quickstart's typed config on the digit folder: 10 classes, on device, `steps` steps."""
  values = {'data.dataset': f'folder:{folder}', 'data.data_dir': os.path.join(folder, '..', 'cache'),
            'data.on_device': True, 'data.random_flip': False,  # a mirrored digit is another glyph
            'model.num_classes': 10, 'training.num_steps': steps, 'seed': seed}
  return convert.with_values(convert.from_configdict(quickstart.get_config()), values)


def train(config) -> tuple[object, object, float]:
  """Returns (the trained state, the run's components, seconds of training after the compiling first step)."""
  components = build_lib.build(config)
  state = build_lib.initial_state(config, components)
  images, labels = data.load_split(config.data, 'train', with_labels=True)
  on_device = device_data.to_device(images, components.mesh, labels)
  state, _ = components.step_fn(state, on_device)
  begun = time.perf_counter()
  for _ in range(config.training.num_steps - 1):
    state, metrics = components.step_fn(state, on_device)
  jax.block_until_ready(metrics)
  return state, components, time.perf_counter() - begun


def agreement(config, components, state, judge, scale: float, per_class: int) -> float:
  """Returns the fraction of samples at guidance scale `scale` that the judge reads as their requested digit."""
  guided = build_lib.make_sampler(config, components.model, components.schedule, components.mesh, config.sampling,
                                  build_lib.guidance_of(config, scale, ()))
  labels = sampler_lib.balanced_labels(10 * per_class, 10)
  batches = guided.batches(state.ema_params, lambda i: keys.eval_key(state.rng, i), len(labels), 100, labels)
  samples = np.concatenate([np.asarray(jax.device_get(b)) for b in batches])
  uint8 = np.clip(np.rint((samples + 1) * 127.5), 0, 255).astype(np.uint8)
  return float(np.mean(judge.predict(to_8x8(uint8)) == labels))


def main(argv):
  del argv
  root = tempfile.mkdtemp(prefix='guidance_digits_')
  images, labels = write_digit_folder(os.path.join(root, 'digits'))
  judge, judge_accuracy = train_judge(images, labels)
  config = config_for(os.path.join(root, 'digits'), _STEPS.value, _SEED.value)
  state, components, train_s = train(config)
  scales = [float(w) for w in _SCALES.value]
  rows = [(w, agreement(config, components, state, judge, w, _PER_CLASS.value)) for w in scales]
  table = '\n'.join(['| guidance w | samples | agree with the requested digit |', '|---:|---:|---:|'] +
                    [f'| {w:g} | {10 * _PER_CLASS.value} | {score:.1%} |' for w, score in rows])
  print(table)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'a') as f:
      f.write(f'\n## Guidance on real images: class-conditional digits ({datetime.date.today().isoformat()})\n\n'
              f'Machine: {machine_info.cpu_model()}, {os.cpu_count()} cores (load {machine_info.load_average()}); '
              f'Python {platform.python_version()}, jax {jax.__version__}. Command: '
              f'`python -m benchmarks.guidance_digits {" ".join(sys.argv[1:])}`.\n'
              f'Data: scikit-learn\'s {len(images)} 8x8 digits as a folder of class subfolders at {IMAGE_SIZE} px; '
              f'configs/quickstart.py\'s U-Net with 10 classes, label dropout 0.1, {_STEPS.value} steps '
              f'({train_s:.0f} s after the first), seed {_SEED.value}; {config.sampling.sampler} '
              f'{config.sampling.num_steps} steps, eta {config.sampling.eta:g}, EMA params. Judge: logistic '
              f'regression on 80% of the real digits at 8x8, {judge_accuracy:.1%} accurate on the other 20%; '
              f'samples are 2x2-averaged to 8x8 grey. Chance is 10%.\n\n{table}\n')


if __name__ == '__main__':
  app.run(main)
