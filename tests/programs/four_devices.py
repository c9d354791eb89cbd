"""Data parallelism on 4 CPU devices: the train step and the sampler on 4 devices equal them on one; a run resumes.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/programs/four_devices.py \
        '{"learning_rate": ..., "atol": ..., "resume": WORKDIR}'

Run by tests/test_sharding.py in an interpreter of its own (the device count is fixed when JAX starts); prints
EQUAL when every check holds. With "resume", it then trains the tiny config's workdir to its end as
`python -m ddpm_jax.main` would (main.run, in this process: one interpreter start for all of it), and the test
compares the result with the one-device run.
"""
import importlib.util
import json
import os
import sys

import jax
import numpy as np
from jax.sharding import Mesh

from ddpm_jax.core import sampler, schedules, sharding, train_step
from ddpm_jax.core.models.unet import UNet, UNetConfig

MODEL = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                        num_groups=4, dropout=0.0))


def check_train_step(learning_rate: float, atol: float) -> None:
  """Asserts 3 steps on 4 devices (whole batches, and 2 microbatches) end where they end on one device.

  atol: gradients summed in another order, amplified by Adam: ~3e-2 of a step at most (tests/conftest.py's
  adam_atol; seen: 4e-3), whatever the param's magnitude; two rows swapped in a batch move params by ~3 steps.
  """
  model = MODEL
  schedule = schedules.make_schedule('linear', 100)
  optimizer = train_step.make_optimizer(learning_rate, 0, 1.0)
  step = train_step.make_train_step(model.apply, schedule, optimizer, train_step.Objective(ema_decay=0.9))
  batches = [{'image': np.random.default_rng(i).uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)} for i in range(3)]

  def train(mesh, step_fn=step):
    state = train_step.create_train_state(train_step.init_params(model, 8, 0), optimizer, jax.random.PRNGKey(1))
    state = sharding.replicate(state, mesh)
    for batch in batches:
      state, metrics = step_fn(state, sharding.global_batch(batch, mesh))
    return state, metrics

  four, m4 = train(sharding.make_mesh())
  one, m1 = train(Mesh(np.asarray(jax.devices()[:1]), (sharding.DATA_AXIS,)))
  assert len(jax.tree_util.tree_leaves(four.params)[0].sharding.device_set) == 4
  # Reductions over the batch run in another order on 4 devices: the loss (~1) equal to float32 rounding.
  np.testing.assert_allclose(float(m4['loss']), float(m1['loss']), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(four.params), jax.tree_util.tree_leaves(one.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)

  # training.grad_accum_steps=2: 2 microbatches of 4, each split over the 4 devices (1 row on each).
  mesh = sharding.make_mesh()
  accumulating = train_step.make_train_step(model.apply, schedule, optimizer,
                                            train_step.Objective(ema_decay=0.9, grad_accum_steps=2),
                                            batch_sharding=sharding.batch_sharded(mesh))
  state = sharding.replicate(train_step.create_train_state(train_step.init_params(model, 8, 0), optimizer,
                                                           jax.random.PRNGKey(1)), mesh)
  compiled = accumulating.lower(state, sharding.global_batch(batches[0], mesh)).compile()
  hlo = compiled.as_text()
  assert 'f32[1,8,8,3]' in hlo and 'f32[4,8,8,3]' not in hlo, hlo[:2000]
  four, m4 = train(mesh, compiled)  # the executable just inspected: no second compile
  np.testing.assert_allclose(float(m4['loss']), float(m1['loss']), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(four.params), jax.tree_util.tree_leaves(one.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


def check_sampler() -> None:
  """Asserts the sampler splits a batch over the 4 devices and gives one device's images."""
  model = MODEL
  schedule = schedules.make_schedule('cosine', 50)
  section = sampler.SamplerSettings(sampler='ddim', num_steps=5, variance='beta_tilde', eta=1.0, clip_denoised=True,
                                    timestep_spacing='leading')
  params = train_step.init_params(model, 8, 0)

  def sample(mesh, batch):
    fn = sampler.make_sampler(model.apply, schedule, section, prediction='eps', image_size=8, mesh=mesh).sample_fn
    shape = (batch, 8, 8, 3)
    compiled = fn.lower(sharding.replicate(params, mesh), jax.random.PRNGKey(3), shape).compile().as_text()
    return np.asarray(fn(sharding.replicate(params, mesh), jax.random.PRNGKey(3), shape)), compiled

  four, hlo = sample(sharding.make_mesh(), 8)
  one, _ = sample(Mesh(np.asarray(jax.devices()[:1]), (sharding.DATA_AXIS,)), 8)
  # Each device ran 2 of the 8 images through the U-Net; they were gathered at the end.
  assert 'all-gather' in hlo and 'f32[2,8,8,' in hlo, hlo[:2000]
  np.testing.assert_allclose(four, one, atol=1e-5)
  odd, _ = sample(sharding.make_mesh(), 6)  # does not divide by 4: runs replicated
  assert odd.shape == (6, 8, 8, 3)


def resume(workdir: str) -> None:
  """Trains tests/configs/tiny.py in workdir to its last step, resuming from the newest checkpoint, on 4 devices."""
  from ddpm_jax import main  # pylint: disable=g-import-not-at-top  # TensorFlow and CLU: only when asked
  tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.dirname(tests))  # tiny.py builds on configs/quickstart.py
  tiny = os.path.join(tests, 'configs', 'tiny.py')
  spec = importlib.util.spec_from_file_location('tiny_config', tiny)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  main.run(module.get_config(), workdir, 'train', None)


if __name__ == '__main__':
  assert jax.device_count() == 4, jax.devices()
  settings = json.loads(sys.argv[1])
  check_train_step(settings['learning_rate'], settings['atol'])
  check_sampler()
  print('EQUAL')
  if settings.get('resume'):
    resume(settings['resume'])
