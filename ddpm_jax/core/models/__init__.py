"""Flax models. Pure: imports only jax, flax and numpy."""
