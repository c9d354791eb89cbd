r"""Images per second the input pipeline delivers: from the resize-once cache vs decoding JPEGs.

Generates a folder of photo-like JPEGs (Food-101-sized, 512x384 by default),
then times, at --image_size:
  1. building the cache (threaded decode + crop + resize, once per dataset);
  2. reading the cache: the source alone, one `_getitems` call per batch,
     grain's per-example shuffle/flip/batch of uint8 (the loader's design
     before it read whole batches, for comparison), and the training loader
     (`ddpm_jax.data.make_train_loader`: batch-level shuffle, read and flips,
     then the conversion to float32 in [-1, 1]), also with 0 and 2 read threads;
  3. the same loader pipeline over a source that decodes and resizes each JPEG
     on every read (no cache), with and without PIL's reduced-scale JPEG draft.
Prints a table and appends it to BENCHMARKS.md with date, machine, versions
and the command.

Run from the repository root (it reads configs/default.py):

  python -m benchmarks.input_pipeline --num_images=2048 --seconds=5
"""
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
import grain
import numpy as np
import PIL
from PIL import Image

from configs import default
import ddpm_jax.data
from ddpm_jax.data import folder_source
from ddpm_jax.data import loader
from ddpm_jax.data import preprocess
from benchmarks import machine_info

_NUM_IMAGES = flags.DEFINE_integer('num_images', 2048, 'JPEGs to generate.')
_SOURCE_SIZE = flags.DEFINE_list('source_size', ['512', '384'], 'Width,height of each JPEG.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 64, 'Side of the images the loader delivers.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
_SECONDS = flags.DEFINE_float('seconds', 5.0, 'Time each loader measurement for about this long.')
_WORKDIR = flags.DEFINE_string('workdir', '', 'Where to put the JPEGs and the cache (default: a temp dir).')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to.')
_WARMUP_BATCHES = 10


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
  """Returns a smooth random image with grain, which JPEG compresses about as well as a photo."""
  coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize(
      (width, height), Image.Resampling.BICUBIC)
  noisy = np.asarray(coarse, np.float32) + rng.normal(0, 6, (height, width, 3))
  return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_jpegs(directory: str, count: int, size: tuple[int, int]) -> list[str]:
  """Returns the paths of `count` photo-like JPEGs written under `directory`, 100 per subfolder."""
  rng = np.random.default_rng(0)
  paths = []
  for index in range(count):
    path = os.path.join(directory, f'{index // 100:04d}', f'{index:06d}.jpg')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    photo_like(rng, *size).save(path, quality=90)
    paths.append(path)
  return paths


class DecodingSource:
  """A source that decodes and resizes a JPEG on every read: the pipeline without the cache."""

  def __init__(self, paths: list[str], image_size: int, draft: bool):
    self.paths, self.image_size, self.draft = paths, image_size, draft

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> np.ndarray:
    if self.draft:
      return preprocess.decode_image(self.paths[index], self.image_size)
    with Image.open(self.paths[index]) as image:
      return preprocess.resize_square(image.convert('RGB'), self.image_size)


def images_per_second(iterator, batch_size: int, seconds: float) -> float:
  """Returns the rate at which `iterator` yields images, after a warm-up, over about `seconds`."""
  for _ in range(_WARMUP_BATCHES):
    next(iterator)
  batches, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(iterator)
    batches += 1
  return batches * batch_size / (time.perf_counter() - start)


def loader_over(source, batch_size: int, **read_options) -> grain.DatasetIterator:
  """Returns the training loader's iterator (shuffle, flip, batch, to float) over `source`."""
  dataset = loader.train_dataset(source, global_batch_size=batch_size, seed=0, flip=True)
  return loader.to_iterator(dataset, num_workers=0, **read_options)


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Returns `image` mirrored left-right with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def per_example_uint8_batches(source, batch_size: int) -> grain.DatasetIterator:
  """Returns grain's per-example pipeline: shuffle, flip and batch uint8, one element an image."""
  dataset = grain.MapDataset.source(source).shuffle(seed=0)
  dataset = dataset.random_map(random_flip, seed=1).batch(batch_size, drop_remainder=True)
  return loader.to_iterator(dataset.repeat(), num_workers=0)


def batch_reads_per_second(source, batch_size: int, num_batches: int = 200) -> float:
  """Returns the images per second of `_getitems` over random batches: the read alone."""
  order = np.random.default_rng(0).permutation(len(source))
  start = time.perf_counter()
  for batch in range(num_batches):
    begin = batch * batch_size % (len(source) - batch_size + 1)
    np.stack(source._getitems(order[begin:begin + batch_size]))  # pylint: disable=protected-access
  return num_batches * batch_size / (time.perf_counter() - start)


def measure(jpeg_dir: str, cache_dir: str, paths: list[str]) -> list[tuple[str, float]]:
  """Returns (what, images per second) rows for the cache build, cached reads and JPEG reads."""
  size, batch, seconds = _IMAGE_SIZE.value, _BATCH_SIZE.value, _SECONDS.value
  config = default.get_config().data
  config.dataset, config.image_size, config.data_dir = f'folder:{jpeg_dir}', size, cache_dir
  start = time.perf_counter()
  source = folder_source.folder_source(jpeg_dir, 'train', image_size=size, data_dir=cache_dir,
                                       strict=True, seed=0)
  rows = [(f'build the cache ({preprocess.default_num_threads()} decode threads)',
           len(source) / (time.perf_counter() - start))]
  start, order = time.perf_counter(), np.random.default_rng(0).permutation(len(source))
  for _ in range(5):
    for index in order:
      source[index]
  rows.append(('cache: source[i] alone, random order', 5 * len(source) / (time.perf_counter() - start)))
  rows.append(('cache: source._getitems, one call a batch, random order',
               batch_reads_per_second(source, batch)))
  rows.append(('cache: grain per-example shuffle + flip + batch, uint8 out (the old design)',
               images_per_second(per_example_uint8_batches(source, batch), batch, seconds)))
  rows.append(('cache: make_train_loader, batch-level (float32 out)', images_per_second(
      ddpm_jax.data.make_train_loader(config, global_batch_size=batch, seed=0), batch, seconds)))
  for threads in (0, 2):
    rows.append((f'cache: the same loader with {threads} read threads instead', images_per_second(
        loader_over(source, batch, num_threads=threads), batch, seconds)))
  for draft, name in ((True, 'reduced-scale JPEG decode (as the cache build)'),
                      (False, 'full-size decode')):
    rows.append((f'no cache: {name} + resize per read', images_per_second(
        loader_over(DecodingSource(paths, size, draft), batch), batch, seconds)))
  return rows


def machine() -> str:
  """Returns the CPU model, the CPUs this process may use and the load average."""
  model = machine_info.cpu_model()
  load = machine_info.load_average()
  return f'{model}; {preprocess.default_num_threads()} CPUs usable; load average {load}'


def versions() -> str:
  """Returns the versions of the libraries the pipeline runs on."""
  return (f'Python {platform.python_version()}, numpy {np.__version__}, Pillow {PIL.__version__}, '
          f'grain {getattr(grain, "__version__", "?")}, {platform.system()} {platform.release()}')


def report(rows: list[tuple[str, float]], jpeg_bytes: int) -> str:
  """Returns the Markdown section for BENCHMARKS.md."""
  width, height = _SOURCE_SIZE.value
  lines = [
      f'## Input pipeline, {datetime.datetime.now().isoformat(timespec="seconds")}', '',
      f'- Machine: {machine()}', f'- Versions: {versions()}',
      f'- Command: `python -m benchmarks.input_pipeline {" ".join(sys.argv[1:])}`',
      f'- Data: {_NUM_IMAGES.value} generated {width}x{height} JPEGs (mean '
      f'{jpeg_bytes / _NUM_IMAGES.value / 1024:.0f} KiB), delivered at '
      f'{_IMAGE_SIZE.value}x{_IMAGE_SIZE.value} in batches of {_BATCH_SIZE.value}, loader '
      f'{loader._READ_THREADS} read thread(s) unless stated (as in ddpm_jax/data/loader.py), '  # pylint: disable=protected-access
      'num_workers=0', '',
      '| pipeline | images/s |', '|---|---:|']
  lines += [f'| {what} | {rate:,.0f} |' for what, rate in rows]
  return '\n'.join(lines) + '\n\n'


def main(argv):
  del argv
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix='ddpm_jax_bench_')
  jpeg_dir, cache_dir = os.path.join(workdir, 'jpegs'), os.path.join(workdir, 'cache')
  shutil.rmtree(cache_dir, ignore_errors=True)  # always time a fresh build
  width, height = (int(x) for x in _SOURCE_SIZE.value)
  paths = sorted(folder_source.list_images(jpeg_dir)) if os.path.isdir(jpeg_dir) else []
  paths = [os.path.join(jpeg_dir, p) for p in paths]
  if len(paths) != _NUM_IMAGES.value:
    shutil.rmtree(jpeg_dir, ignore_errors=True)
    paths = write_jpegs(jpeg_dir, _NUM_IMAGES.value, (width, height))
  rows = measure(jpeg_dir, cache_dir, paths)
  section = report(rows, sum(os.path.getsize(p) for p in paths))
  print(section)
  with open(_OUTPUT.value, 'a') as f:
    f.write(section)
  if not _WORKDIR.value:
    shutil.rmtree(workdir)


if __name__ == '__main__':
  app.run(main)
