"""ddpm_jax: a JAX/Flax trainer and evaluator for DDPM image generators.

`ddpm_jax.core` is the pure core (schedules, diffusion, keys, train step, sampler, sharding,
on-device data, the U-Net): it imports only jax, flax, optax and numpy. Everything with I/O
(data, checkpoints, logging, evaluation, the CLI) lives in the modules beside it; the
README's Layout table lists them all.
"""
