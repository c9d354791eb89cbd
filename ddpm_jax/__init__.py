"""ddpm_jax: a JAX/Flax trainer and evaluator for DDPM image generators.

The pure core (`schedules`, `diffusion`, `models`, `train_step`) imports only
jax, flax, optax and numpy; everything with I/O lives in the outer modules.
"""
