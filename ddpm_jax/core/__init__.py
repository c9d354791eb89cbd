"""The pure core: every function here is math on arrays and pytrees; nothing reads or writes files.

Imports only jax, flax, optax and numpy (tests/test_layering.py imports every module of this
folder with TensorFlow, TFDS, grain, CLU, Orbax, torch, absl and ml_collections blocked), so
it runs on machines where those cannot be installed.

  schedules    noise schedules -> Schedule (an immutable pytree of arrays)
  diffusion    q_sample, losses, the samplers' steps, the scan sampler
  timesteps    the samplers' grids: timesteps and noise levels (leading, linspace, trailing, logsnr, karras)
  solvers      DDIM, DPM-Solver++(2M) and Heun updates on noise levels, and the scan over a noise-level grid
  options      how a config option is declared (default, doc, choices or range, free on resume)
  keys         every random stream of a run, each a named function; no two coincide
  train_step   TrainState, the jitted train step (with gradient accumulation), EMA, the optimizer
  loss_scale   dynamic loss scaling of float16 compute
  sampler      one builder: sampler settings -> jitted sampler and its batch loop
  sharding     the 'data' mesh: replicated state, batch-split inputs
  device_data  the whole training split in device memory, batches drawn inside the step
  models/unet  the Flax U-Net
"""
