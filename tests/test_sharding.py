"""Data parallelism on 4 CPU devices: the same global batch gives the same step as on one device."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from ddpm_jax.core import schedules, sharding, train_step
    from ddpm_jax.core.models.unet import UNet, UNetConfig

    assert jax.device_count() == 4, jax.devices()
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                            num_groups=4, dropout=0.0))
    schedule = schedules.make_schedule('linear', 100)
    optimizer = train_step.make_optimizer(1e-3, 0, 1.0)
    step = train_step.make_train_step(model.apply, schedule, optimizer, loss='mse', prediction='eps', ema_decay=0.9)
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
    # Reductions over the batch run in another order on 4 devices: equal to float32 rounding.
    np.testing.assert_allclose(float(m4['loss']), float(m1['loss']), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(four.params), jax.tree_util.tree_leaves(one.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

    # training.grad_accum_steps=2: 2 microbatches of 4, each split over the 4 devices (1 row on each).
    mesh = sharding.make_mesh()
    accumulating = train_step.make_train_step(model.apply, schedule, optimizer, loss='mse', prediction='eps',
                                              ema_decay=0.9, grad_accum_steps=2,
                                              batch_sharding=sharding.batch_sharded(mesh))
    state = sharding.replicate(train_step.create_train_state(train_step.init_params(model, 8, 0), optimizer,
                                                             jax.random.PRNGKey(1)), mesh)
    compiled = accumulating.lower(state, sharding.global_batch(batches[0], mesh)).compile()
    hlo = compiled.as_text()
    assert 'f32[1,8,8,3]' in hlo and 'f32[4,8,8,3]' not in hlo, hlo[:2000]
    four, m4 = train(mesh, compiled)  # the executable just inspected: no second compile
    np.testing.assert_allclose(float(m4['loss']), float(m1['loss']), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(four.params), jax.tree_util.tree_leaves(one.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    print('EQUAL')
''')


def run_on_four_devices(script: str) -> None:
  """Runs script in a fresh Python with 4 CPU devices (set before JAX starts); it must print EQUAL."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0')
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0 and 'EQUAL' in result.stdout, result.stderr[-3000:]


def test_train_step_on_four_devices_equals_one_device():
  run_on_four_devices(SCRIPT)


SAMPLER_SCRIPT = textwrap.dedent('''
    import jax, numpy as np
    from jax.sharding import Mesh
    from ddpm_jax.core import sampler, schedules, sharding, train_step
    from ddpm_jax.core.models.unet import UNet, UNetConfig

    assert jax.device_count() == 4, jax.devices()
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                            num_groups=4, dropout=0.0))
    schedule = schedules.make_schedule('cosine', 50)
    section = dict(sampler='ddim', num_steps=5, variance='beta_tilde', eta=1.0, clip_denoised=True,
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
    print('EQUAL')
''')


def test_sampler_splits_the_batch_over_four_devices_and_matches_one_device():
  run_on_four_devices(SAMPLER_SCRIPT)
