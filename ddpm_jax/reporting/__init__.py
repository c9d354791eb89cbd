"""Reading finished workdirs and comparing them: table.md and the figures of `python -m ddpm_jax.report`. [I/O]"""
