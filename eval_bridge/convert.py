"""Generated images as uint8: the one quantisation shared by saved PNGs and the metrics.

`to_uint8` is what the training code uses to write PNGs; the metrics see the very
same integers, so a PNG on disk and the images FID/KID/MS-SSIM scored agree bit
for bit. torch is imported only inside `to_torch_uint8_nchw`: writing PNGs must
not load torch (nor its CUDA libraries) into a JAX process.
"""
import jax
import jax.numpy as jnp
import numpy as np


def to_uint8(images) -> np.ndarray:
  """Returns uint8 NHWC images: `uint8(clip(round((x + 1) * 127.5), 0, 255))`.

  Args:
    images: floats in [-1, 1], NHWC (numpy, JAX or anything `np.asarray` takes).

  The arithmetic is float32 whatever the input dtype, so this host version and
  `_quantise_nchw` on device agree bit for bit. Rounding is half-to-even
  (`np.round`, like `jnp.round`). NaN becomes 0: casting NaN to uint8 is
  undefined and numpy and XLA disagree on it.
  """
  x = np.asarray(images, dtype=np.float32)
  quantised = np.clip(np.round((x + np.float32(1)) * np.float32(127.5)), 0, 255)
  return np.where(np.isnan(quantised), 0, quantised).astype(np.uint8)


@jax.jit
def _quantise_nchw(images: jax.Array) -> jax.Array:
  """Returns `to_uint8(images)` computed on the images' device, transposed to NCHW."""
  x = images.astype(jnp.float32)
  quantised = jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255)
  quantised = jnp.where(jnp.isnan(quantised), 0, quantised).astype(jnp.uint8)
  return jnp.transpose(quantised, (0, 3, 1, 2))


def _on_one_gpu(images) -> bool:
  """Returns whether `images` is a JAX array held whole on one GPU."""
  if not isinstance(images, jax.Array):
    return False
  devices = images.devices()
  return len(devices) == 1 and next(iter(devices)).platform == 'gpu'


def to_torch_uint8_nchw(images):
  """Returns a torch uint8 NCHW tensor of `images` ([-1, 1], NHWC), quantised as `to_uint8`.

  A JAX array on one GPU is quantised there and handed to torch through DLPack,
  without a copy (the tensor lands on the same GPU). Anything else, including an
  array sharded over several devices (DLPack takes one buffer), goes through the
  host and `to_uint8` itself.
  """
  import torch  # pylint: disable=g-import-not-at-top  # see the module docstring

  if _on_one_gpu(images) and torch.cuda.is_available():
    return torch.from_dlpack(_quantise_nchw(images))
  nchw = np.ascontiguousarray(to_uint8(images).transpose(0, 3, 1, 2))
  return torch.from_numpy(nchw)
