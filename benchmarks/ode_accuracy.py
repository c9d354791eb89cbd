r"""How exactly each deterministic sampler and grid solves the probability-flow ODE, at 5 to 100 steps.

Data whose answer is known in closed form: x0 ~ N(mu, s^2) per pixel (mu in [-0.5, 0.5], s in
[0.05, 0.25]), driven by the exact denoiser (an eps model: E[eps | x_t] at the t it is given).
Each pixel's marginal at t is N(a mu, a^2 s^2 + sigma^2) (a^2 = alpha_bar_t, sigma^2 = 1 - a^2),
and the probability-flow ODE, the monotone map between these Gaussians, takes x_T at t = T-1 to
x0 = mu + s (x_T - a_T mu) / sqrt(a_T^2 s^2 + sigma_T^2). For each schedule (--schedules, T = 1000),
sampler and grid (--rows) and step count (--steps) it runs `diffusion.sample` (float32, the shipped
scan; clip_denoised off) from --num_samples x_T and reports the RMS error to that solution. A grid
starting below T-1 (leading) pays for the noise it skips. heun makes 2n - 1 model calls in n steps,
the others n. Prints a table and appends it to BENCHMARKS.md. Run from the repository root (~2 min
on 2 CPU cores):

  python -m benchmarks.ode_accuracy
"""
import datetime
import os
import platform
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import machine_info
from ddpm_jax.core import diffusion, schedules

_SCHEDULES = flags.DEFINE_list('schedules', ['linear', 'cosine'], 'Noise schedules, T = 1000.')
_ROWS = flags.DEFINE_list('rows', ['ddim:leading', 'ddim:trailing', 'ddim:logsnr', 'ddim:karras', 'dpmpp_2m:linspace',
                                   'dpmpp_2m:logsnr', 'dpmpp_2m:karras', 'heun:trailing', 'heun:logsnr', 'heun:karras'],
                          'sampler:timestep_spacing, each (dpmpp_2m on leading/linspace/trailing runs its own grid).')
_STEPS = flags.DEFINE_list('steps', ['5', '10', '20', '50', '100'], 'Step counts.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 64, 'x_T draws of the 8x8x3 image.')
_OUTPUT = flags.DEFINE_string('output', 'BENCHMARKS.md', 'File the results are appended to ("" = none).')


def exact_denoiser(schedule, mu, s):
  """Returns the eps model that outputs the exact E[eps | x_t] of the Gaussian data at its timestep."""
  mu, s = jnp.float32(mu), jnp.float32(s)

  def denoise(x_t, t):
    a = schedule.sqrt_alphas_cumprod[t][:, None, None, None]
    sigma = schedule.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
    return sigma * (x_t - a * mu) / (a ** 2 * s ** 2 + sigma ** 2)
  return denoise


def rms_errors(name: str, rows, steps) -> dict:
  """Returns {(sampler, spacing, n): RMS error to the exact ODE solution} on the named schedule."""
  schedule = schedules.make_schedule(name, 1000)
  rng = np.random.default_rng(0)
  mu, s = rng.uniform(-0.5, 0.5, (8, 8, 3)), rng.uniform(0.05, 0.25, (8, 8, 3))
  x_T = rng.normal(size=(_NUM_SAMPLES.value, 8, 8, 3))
  a_T = float(schedule.sqrt_alphas_cumprod[-1])
  exact = mu + s * (x_T - a_T * mu) / np.sqrt(a_T ** 2 * s ** 2 + 1 - a_T ** 2)
  errors = {}
  for sampler, spacing in rows:
    for n in steps:
      out = diffusion.sample(exact_denoiser(schedule, mu, s), schedule, jax.random.PRNGKey(0), x_T.shape,
                             sampler=sampler, num_steps=n, timestep_spacing=spacing, clip_denoised=False,
                             x_T=x_T.astype(np.float32))
      errors[sampler, spacing, n] = float(np.sqrt(np.mean((np.asarray(out, np.float64) - exact) ** 2)))
    print(name, sampler, spacing, ' '.join(f'{errors[sampler, spacing, n]:.4f}' for n in steps), flush=True)
  return errors


def grid_name(sampler: str, spacing: str) -> str:
  """Returns how the table names a sampler's grid."""
  if sampler == 'dpmpp_2m' and spacing in ('leading', 'linspace', 'trailing'):
    return 'own (n + 1 linspace, less t = 0)'
  return spacing


def main(argv):
  del argv
  rows = [tuple(row.split(':')) for row in _ROWS.value]
  steps = [int(n) for n in _STEPS.value]
  header = '| schedule | sampler | grid | ' + ' | '.join(f'{n} steps' for n in steps) + ' |'
  table = [header, '|---|---|---|' + '---:|' * len(steps)]
  for name in _SCHEDULES.value:
    errors = rms_errors(name, rows, steps)
    for sampler, spacing in rows:
      values = ' | '.join(f'{errors[sampler, spacing, n]:.4f}' for n in steps)
      table.append(f'| {name} | {sampler} | {grid_name(sampler, spacing)} | {values} |')
  stamp = datetime.datetime.now().isoformat(timespec='seconds')
  lines = [f'## Few-step samplers on the exact Gaussian probability-flow ODE, {stamp}', '',
           f'- Command: `{" ".join(["python -m benchmarks.ode_accuracy", *sys.argv[1:]])}`',
           f'- Machine: {platform.platform()}; {machine_info.cpu_model()}, {os.cpu_count()} CPUs; JAX on '
           f'{jax.default_backend()}; load average {machine_info.load_average()}',
           f'- Versions: Python {platform.python_version()}, jax {jax.__version__}, numpy {np.__version__}',
           f'- Data: x0 ~ N(mu, s^2) per pixel of an 8x8x3 image, mu in [-0.5, 0.5], s in [0.05, 0.25]; '
           f'{_NUM_SAMPLES.value} x_T; exact eps model; T = 1000; float32; clip_denoised off',
           '- RMS error of the sample to the exact ODE solution from x_T at t = T-1; heun makes 2n - 1 model calls '
           'in n steps, the others n', '', *table, '', '']
  section = '\n'.join(lines)
  print(section)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'a') as f:
      f.write(section)


if __name__ == '__main__':
  app.run(main)
