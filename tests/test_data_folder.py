"""Tests of ddpm_jax.data.folder_source: formats, colour modes, crop, bad files, the cache."""
import io
import logging
import os
import pickle

import numpy as np
from PIL import Image
import pytest

from ddpm_jax.data import cache
from ddpm_jax.data import folder_source as folder_lib
from ddpm_jax.data import preprocess

IMAGE_SIZE = 8
GREEN = (0, 200, 0)


def banded(width: int, height: int) -> Image.Image:
  """Returns a GREEN image whose parts outside the centre square are red: a crop must drop them."""
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  pixels = np.full((height, width, 3), (255, 0, 0), np.uint8)
  pixels[top:top + side, left:left + side] = GREEN
  return Image.fromarray(pixels)


def palette_with_transparency() -> Image.Image:
  """Returns a 'P' image: every pixel is palette entry 0, which is transparent."""
  image = Image.new('P', (10, 10), 0)
  image.putpalette([10, 20, 30] * 256)
  image.info['transparency'] = 0
  return image


def sixteen_bit(value: int) -> Image.Image:
  """Returns an 'I;16' grayscale image of one 16-bit value."""
  return Image.fromarray(np.full((10, 12), value, np.uint16))


def save(image: Image.Image, path, **options) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, **options)


# relative path → (image, save options, expected RGB after preprocessing, tolerance)
GOOD_IMAGES = {
    'a/wide.png': (banded(30, 10), {}, GREEN, 0),
    'a/b/c/tall.PNG': (banded(9, 27), {}, GREEN, 0),
    'a/b/gray.jpg': (Image.new('L', (20, 20), 100), {'quality': 95}, (100, 100, 100), 2),
    'a/palette.png': (palette_with_transparency(), {'transparency': 0}, (255, 255, 255), 0),
    'b/half_red.png': (Image.new('RGBA', (10, 10), (255, 0, 0, 128)), {}, (255, 127, 127), 1),
    'b/cmyk.JPEG': (Image.new('CMYK', (16, 16), (0, 255, 255, 0)), {'quality': 95}, (255, 0, 0), 4),
    'c/deep.png': (sixteen_bit(128 * 257), {}, (128, 128, 128), 0),
    'c/blue.webp': (Image.new('RGB', (10, 10), (0, 0, 255)), {'lossless': True}, (0, 0, 255), 0),
    'c/d/lime.Bmp': (Image.new('RGB', (12, 10), (0, 255, 0)), {}, (0, 255, 0), 0),
}
BAD_FILES = ('a/corrupt.png', 'b/truncated.jpg')


def write_truncated_jpeg(path) -> None:
  encoded = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
      encoded, 'JPEG')
  with open(path, 'wb') as f:
    f.write(encoded.getvalue()[:len(encoded.getvalue()) // 2])


@pytest.fixture(name='folder')
def fixture_folder(tmp_path):
  """Returns a folder of GOOD_IMAGES, BAD_FILES, a text file and a hidden file."""
  root = tmp_path / 'images'
  for relative, (image, options, _, _) in GOOD_IMAGES.items():
    save(image, root / relative, **options)
  (root / BAD_FILES[0]).write_bytes(b'\x89PNG not really a png')
  write_truncated_jpeg(root / BAD_FILES[1])
  (root / 'notes.txt').write_text('not an image')
  (root / 'c' / '.hidden.jpg').write_bytes(b'macOS resource fork')
  return str(root)


@pytest.fixture(name='cache_dir')
def fixture_cache_dir(tmp_path, monkeypatch):
  """Returns the directory all caches go to in a test (via $XDG_CACHE_HOME, not data_dir)."""
  monkeypatch.delenv(cache.CACHE_DIR_ENV, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  return str(tmp_path / 'xdg')


def load(path, strict=False, data_dir='', split='train'):
  return folder_lib.folder_source(path, split, image_size=IMAGE_SIZE, data_dir=data_dir,
                                  strict=strict, seed=0)


def files_under(directory) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, n), directory)
                for d, _, names in os.walk(directory) for n in names)


def test_every_format_and_mode_becomes_cropped_rgb(folder, cache_dir, caplog):
  with caplog.at_level(logging.INFO):
    source = load(folder)
  assert len(source) == len(GOOD_IMAGES)
  for index, relative in enumerate(sorted(GOOD_IMAGES)):
    image, expected, tolerance = source[index], GOOD_IMAGES[relative][2], GOOD_IMAGES[relative][3]
    assert image.dtype == np.uint8 and image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3), relative
    error = np.abs(image.astype(int) - np.array(expected)).max()
    assert error <= tolerance, (relative, image[0, 0], expected)
  assert 'skipped 2 unreadable images' in caplog.text
  assert all(bad in caplog.text for bad in BAD_FILES)
  assert 'ignored 1 files' in caplog.text and 'notes.txt' in caplog.text
  assert files_under(folder) == sorted(list(GOOD_IMAGES) + list(BAD_FILES)
                                       + ['notes.txt', 'c/.hidden.jpg'])  # nothing written there
  assert files_under(cache_dir)  # the cache went to ~/.cache (here $XDG_CACHE_HOME)


def test_train_and_test_are_both_the_whole_folder(folder, cache_dir):
  train, test = load(folder, split='train'), load(folder, split='test')
  assert len(train) == len(test) == len(GOOD_IMAGES)
  assert all((train[i] == test[i]).all() for i in range(len(train)))


def test_strict_names_the_bad_file_and_leaves_no_cache(folder, cache_dir):
  with pytest.raises(ValueError, match=r'Unreadable image .*a/corrupt\.png .*data\.strict=False'):
    load(folder, strict=True)
  assert not [f for f in files_under(cache_dir) if f.endswith('.npy') or 'partial' in f]


@pytest.mark.parametrize('make, error', [
    (lambda root: None, 'does not exist'),
    (lambda root: os.makedirs(root / 'empty' / 'nested'), 'holds no images'),
    (lambda root: (root.mkdir(), (root / 'a.txt').write_text('x')), 'holds no images'),
])
def test_missing_or_empty_folder_is_one_line_naming_it(tmp_path, cache_dir, make, error):
  root = tmp_path / 'data'
  make(root)
  with pytest.raises(ValueError, match=error) as raised:
    load(str(root))
  assert str(root) in str(raised.value) and '\n' not in str(raised.value)


def test_folder_of_only_unreadable_images_fails(tmp_path, cache_dir):
  (tmp_path / 'x.jpg').write_bytes(b'garbage')
  with pytest.raises(ValueError, match='no readable images'):
    load(str(tmp_path))
  assert not [f for f in files_under(cache_dir) if f.endswith('.npy')]


def test_cache_is_reused_and_rebuilt_when_a_file_is_added(folder, cache_dir, monkeypatch, tmp_path):
  first = load(folder, data_dir=str(tmp_path / 'data_dir'))
  assert first.path.startswith(str(tmp_path / 'data_dir'))
  modified = os.stat(first.path).st_mtime_ns
  with monkeypatch.context() as patch:
    patch.setattr(preprocess, 'decode_image', lambda *args: pytest.fail('decoded again'))
    again = load(folder, data_dir=str(tmp_path / 'data_dir'))
  assert again.path == first.path and os.stat(again.path).st_mtime_ns == modified
  save(Image.new('RGB', (10, 10), (1, 2, 3)), os.path.join(folder, 'z/new.png'))
  changed = load(folder, data_dir=str(tmp_path / 'data_dir'))
  assert changed.path != first.path and len(changed) == len(first) + 1
  assert (changed[len(changed) - 1] == (1, 2, 3)).all()


def test_source_pickles_without_its_images(folder, cache_dir):
  source = load(folder)
  source[0]  # opens the memmap
  restored = pickle.loads(pickle.dumps(source))
  assert len(pickle.dumps(source)) < 1000
  assert len(restored) == len(source) and (restored[3] == source[3]).all()
  assert [x.tolist() for x in source._getitems([4, 1])] == [source[4].tolist(), source[1].tolist()]


def test_photos_are_turned_upright_by_their_exif_orientation(tmp_path, cache_dir):
  pixels = np.zeros((16, 16, 3), np.uint8)
  pixels[:, :8] = (255, 0, 0)  # left half red, right half blue, as stored
  pixels[:, 8:] = (0, 0, 255)
  exif = Image.Exif()
  exif[0x0112] = 3  # Orientation: rotate 180 degrees to display
  Image.fromarray(pixels).save(tmp_path / 'photo.jpg', quality=95, exif=exif)
  image = load(str(tmp_path))[0]
  assert image[4, 0, 2] > 200 and image[4, 0, 0] < 60  # blue on the left
  assert image[4, -1, 0] > 200 and image[4, -1, 2] < 60  # red on the right


def test_centre_square_box():
  assert preprocess.centre_square(30, 10) == (10, 0, 20, 10)
  assert preprocess.centre_square(9, 28) == (0, 9, 9, 18)


CLASS_COLOURS = {'bird': (0, 200, 0), 'cat': (200, 0, 0), 'dog': (0, 0, 200)}


def class_folder(root, in_root=()) -> str:
  """Returns a folder of class subfolders (at any depth below them) whose images have their class's colour."""
  for relative, name in [('cat/1.png', 'cat'), ('cat/deep/er/2.png', 'cat'), ('bird/3.png', 'bird'),
                         ('dog/4.png', 'dog'), ('dog/5.jpg', 'dog'), ('bird/6.png', 'bird')]:
    save(Image.new('RGB', (8, 8), CLASS_COLOURS[name]), root / relative)
  (root / 'cat' / '0_corrupt.png').write_bytes(b'\x89PNG not really a png')  # skipped: the rows after it shift
  for relative in in_root:
    save(Image.new('RGB', (8, 8), (9, 9, 9)), root / relative)
  return str(root)


def class_of_colour(image) -> int:
  """Returns the id of the class whose colour `image` has (classes sorted by name)."""
  names = sorted(CLASS_COLOURS)
  return int(np.argmin([np.abs(image.astype(int) - CLASS_COLOURS[name]).sum() for name in names]))


def test_each_image_is_labelled_with_its_first_level_subfolder(tmp_path, cache_dir):
  source = folder_lib.folder_source(class_folder(tmp_path / 'pets'), 'train', image_size=IMAGE_SIZE, data_dir='',
                                    strict=False, seed=0, with_labels=True)
  assert source.class_names == ('bird', 'cat', 'dog') and len(source) == 6
  labels = source.read_labels(np.arange(len(source)))
  assert labels.tolist() == [class_of_colour(source[i]) for i in range(len(source))]
  assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
  restored = pickle.loads(pickle.dumps(source))
  assert restored.read_labels([5, 0]).tolist() == labels[[5, 0]].tolist()


def test_images_in_the_root_are_read_unlabelled_but_refused_with_labels(tmp_path, cache_dir):
  folder = class_folder(tmp_path / 'pets', in_root=('stray.png', 'z.png'))
  source = load(folder)  # unconditional: every image at any depth, as ever
  assert len(source) == 8 and source.read_labels([0, 7]).tolist() == [0, -1]
  with pytest.raises(ValueError, match=r"has 2 images directly in it \(e.g. \['stray.png', 'z.png'\]\)") as raised:
    folder_lib.folder_source(folder, 'train', image_size=IMAGE_SIZE, data_dir='', strict=False, seed=0,
                             with_labels=True)
  assert 'model.num_classes=0' in str(raised.value) and '\n' not in str(raised.value)


def test_a_cache_without_labels_serves_unlabelled_reads_and_is_rebuilt_for_labels(tmp_path, cache_dir, monkeypatch):
  folder = class_folder(tmp_path / 'pets')
  first = load(folder)
  labels_file = first.labels_path
  os.remove(labels_file)  # as an older version left it
  with monkeypatch.context() as patch:
    patch.setattr(preprocess, 'decode_image', lambda *args, **kwargs: pytest.fail('decoded again'))
    old = load(folder)
  assert old.path == first.path and old.class_names == ('bird', 'cat', 'dog')
  assert [x.tolist() for x in old._getitems(range(6))] == [x.tolist() for x in first._getitems(range(6))]
  with pytest.raises(ValueError, match='cached without labels'):
    old.read_labels([0])
  rebuilt = folder_lib.folder_source(folder, 'train', image_size=IMAGE_SIZE, data_dir='', strict=False, seed=0,
                                     with_labels=True)
  assert rebuilt.labels_path == labels_file and os.path.exists(labels_file)
  assert rebuilt.read_labels(range(6)).tolist() == [class_of_colour(rebuilt[i]) for i in range(6)]
