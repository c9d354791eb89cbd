"""The PyTorch side of the benchmarks (diffusers' UNet2DModel set up as our U-Net), and what both sides share.

Shared by benchmarks/train_throughput.py and benchmarks/sampling.py: the models
compared (`model_config`), the machine and version lines. The reference is
diffusers' own code: `UNet2DModel`, `DDPMScheduler.add_noise`, `DDPMPipeline`
and `DDIMPipeline`; our side imports only the pure core of ddpm_jax and
configs/ (ml_collections), never TensorFlow, grain or CLU, so these scripts run
on a machine that has only jax, flax, optax, torch and diffusers.
"""
import dataclasses
import os
import platform
import time
from typing import Callable

import diffusers
import jax
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils import flop_counter

from benchmarks import machine_info
from configs import cifar10_ddpm
from configs import default
from ddpm_jax.config import convert
from ddpm_jax.core.models import unet

CONFIGS = {'cifar10': cifar10_ddpm, 'default': default}
NUM_TIMESTEPS = 1000


def model_config(name: str, dtype: str, image_size: int = 0,
                 base_channels: int = 0) -> tuple[unet.UNetConfig, int]:
  """Returns (our U-Net's config in the given compute dtype, image side) for a config in CONFIGS.

  image_size and base_channels, when not 0, shrink the model for CPU runs.
  """
  if name not in CONFIGS:
    raise ValueError(f'--models: unknown model {name!r}; valid: {", ".join(CONFIGS)} '
                     '(configs/default.py at 64x64, configs/cifar10_ddpm.py at 32x32)')
  config = CONFIGS[name].get_config()
  size = image_size or config.data.image_size
  overrides = {'dtype': dtype, **({'base_channels': base_channels} if base_channels else {})}
  config_slice = dataclasses.replace(convert.from_configdict(config).model, **overrides)
  config_slice.validate(size)
  return config_slice, size


def head_dim(config: unet.UNetConfig, image_size: int) -> int | None:
  """Returns diffusers' attention_head_dim for our num_heads (None = one head of all channels)."""
  channels = dict(zip(config.resolutions(image_size), config.level_channels()))
  attended = {channels[r] for r in config.attention_resolutions} | {config.level_channels()[-1]}
  if config.num_heads == 1:
    return None
  dims = {c // config.num_heads for c in attended}
  if len(dims) > 1:
    raise ValueError(f'UNet2DModel takes one attention_head_dim, but num_heads={config.num_heads} gives '
                     f'{sorted(dims)} over the attended channels {sorted(attended)}')
  return dims.pop()


def diffusers_kwargs(config: unet.UNetConfig, image_size: int) -> dict:
  """Returns UNet2DModel's arguments for the network closest to ours (that of google/ddpm-cifar10-32)."""
  attended = [r in config.attention_resolutions for r in config.resolutions(image_size)]
  return dict(
      sample_size=image_size, in_channels=3, out_channels=3,
      block_out_channels=config.level_channels(), layers_per_block=config.num_res_blocks,
      down_block_types=tuple('AttnDownBlock2D' if a else 'DownBlock2D' for a in attended),
      up_block_types=tuple('AttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(attended)),
      attention_head_dim=head_dim(config, image_size), dropout=config.dropout,
      norm_num_groups=config.num_groups, norm_eps=1e-6,
      # diffusion_tf's embedding (sin first, shift 1) and its TF-SAME stride-2 conv (pad right/bottom).
      flip_sin_to_cos=False, freq_shift=1, downsample_padding=0)


def device() -> torch.device:
  """Returns the device the reference runs on: the first CUDA GPU, else the CPU."""
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def synchronize(dev: torch.device) -> None:
  """Returns once the device has finished its queued work."""
  if dev.type == 'cuda':
    torch.cuda.synchronize(dev)


def make_unet(config: unet.UNetConfig, image_size: int, dev: torch.device) -> diffusers.UNet2DModel:
  """Returns the reference U-Net on dev, fp32 params, channels_last."""
  torch.manual_seed(0)
  model = diffusers.UNet2DModel(**diffusers_kwargs(config, image_size))
  return model.to(dev, memory_format=torch.channels_last)


def count_params(model: torch.nn.Module) -> int:
  """Returns the number of scalars in the model's parameters."""
  return sum(p.numel() for p in model.parameters())


def training_flops_per_image(config: unet.UNetConfig, image_size: int, dev: torch.device) -> float:
  """Returns forward + backward FLOPs per image of the reference, by torch's FlopCounterMode (batch 1)."""
  model = make_unet(config, image_size, dev)
  x = torch.randn(1, 3, image_size, image_size, device=dev)
  t = torch.tensor([NUM_TIMESTEPS // 2], device=dev)
  with flop_counter.FlopCounterMode(display=False) as counter:
    model(x, t).sample.square().mean().backward()
  return float(counter.get_total_flops())


def make_train_step(model: torch.nn.Module, dev: torch.device, dtype: str) -> Callable[[torch.Tensor], None]:
  """Returns step(x0): add_noise at random t, forward (autocast to bf16 if asked), MSE on eps, backward, AdamW."""
  scheduler = diffusers.DDPMScheduler(num_train_timesteps=NUM_TIMESTEPS, beta_schedule='linear')
  optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=dev.type == 'cuda')

  def step(x0: torch.Tensor) -> None:
    noise = torch.randn_like(x0)
    t = torch.randint(0, NUM_TIMESTEPS, (x0.shape[0],), device=dev)
    x_t = scheduler.add_noise(x0, noise, t)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      prediction = model(x_t, t).sample
    loss = F.mse_loss(prediction.float(), noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
  return step


def time_calls(fn: Callable[[], object], calls: int, dev: torch.device) -> float:
  """Returns the seconds `calls` calls of fn take, synchronising only at the end."""
  synchronize(dev)
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  synchronize(dev)
  return time.perf_counter() - start


COMPILE_CHOICES = ('auto', 'true', 'false')


def should_compile(choice: str) -> bool:
  """Returns whether to torch.compile: 'auto' compiles on CUDA only.

  On this project's 2-core CPU, inductor took 11 minutes to build the train step of even a
  2.2M-parameter U-Net, so CPU runs are eager unless asked.
  """
  if choice not in COMPILE_CHOICES:
    raise ValueError(f'--torch_compile={choice!r} is not valid; use one of {", ".join(COMPILE_CHOICES)}')
  return choice == 'true' or (choice == 'auto' and device().type == 'cuda')


def warm_up(build: Callable[[bool], Callable[[], object]], compile_choice: str,
            calls: int) -> tuple[Callable[[], object], str]:
  """Returns (fn, how it runs) after `calls` warm-up calls; eager (and says why) if torch.compile fails."""
  if should_compile(compile_choice):
    try:
      fn = build(True)
      for _ in range(max(calls, 1)):
        fn()
      return fn, 'torch.compile'
    except Exception as error:  # pylint: disable=broad-except
      print(f'torch.compile failed ({type(error).__name__}: {str(error)[:200]}); timing eager instead')
      torch._dynamo.reset()  # pylint: disable=protected-access
      how = f'eager (torch.compile failed: {type(error).__name__})'
  else:
    how = f'eager (--torch_compile={compile_choice})'
  fn = build(False)
  for _ in range(calls):
    fn()
  return fn, how


DTYPES = ('bfloat16', 'float32')


def dtype_note(dtype: str, bf16_how: str) -> str:
  """Returns how the reference computes, and whether this CPU only emulates bf16 (then slower than fp32)."""
  if dtype not in DTYPES:
    raise ValueError(f'--torch_dtype={dtype!r} is not valid; use one of {", ".join(DTYPES)}')
  if dtype == 'float32':
    return 'float32'
  # pylint: disable-next=protected-access
  emulated = device().type == 'cpu' and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
  return bf16_how + (' (emulated on this CPU: no native bf16)' if emulated else '')


def train_images_per_second(config: unet.UNetConfig, image_size: int, batch_size: int, *, steps: int,
                            warmup_steps: int, compile_choice: str, dtype: str) -> tuple[float, str]:
  """Returns (train images/s of the reference on one reused batch, how it ran)."""
  dev = device()
  x0 = torch.rand(batch_size, 3, image_size, image_size, device=dev).mul(2).sub(1)
  x0 = x0.contiguous(memory_format=torch.channels_last)

  def build(compiled: bool) -> Callable[[], None]:
    model = make_unet(config, image_size, dev).train()
    # dynamic=False: one graph per batch size, not a dynamic-shape graph after the second.
    step = make_train_step(torch.compile(model, dynamic=False) if compiled else model, dev, dtype)
    return lambda: step(x0)

  step, how = warm_up(build, compile_choice, warmup_steps)
  images_per_second = batch_size * steps / time_calls(step, steps, dev)
  return images_per_second, f'{dtype_note(dtype, "bf16 autocast")}, channels_last, {how}'


def make_pipeline(config: unet.UNetConfig, image_size: int, sampler: str, compiled: bool, dtype: str):
  """Returns diffusers' DDPMPipeline or DDIMPipeline (eta=0) around the reference U-Net in dtype."""
  dev = device()
  model = make_unet(config, image_size, dev).eval()
  if dtype != 'float32':
    model = model.to(getattr(torch, dtype))
  scheduler = diffusers.DDPMScheduler(num_train_timesteps=NUM_TIMESTEPS, beta_schedule='linear')
  if sampler == 'ddim':
    ddim_scheduler = diffusers.DDIMScheduler.from_config(scheduler.config)
    pipeline = diffusers.DDIMPipeline(unet=model, scheduler=ddim_scheduler)
  else:
    pipeline = diffusers.DDPMPipeline(unet=model, scheduler=scheduler)
  pipeline.set_progress_bar_config(disable=True)
  if compiled:
    pipeline.unet = torch.compile(pipeline.unet, dynamic=False)
  return pipeline


def sample_seconds_per_step(config: unet.UNetConfig, image_size: int, batch_size: int, *, sampler: str,
                            timed_steps: int, compile_choice: str, dtype: str) -> tuple[float, str]:
  """Returns (seconds per reverse step of diffusers' pipeline, how it ran), from one run of timed_steps."""
  dev = device()

  def build(compiled: bool) -> Callable[[], object]:
    pipeline = make_pipeline(config, image_size, sampler, compiled, dtype)
    generator = torch.Generator(dev).manual_seed(0)
    return lambda steps=2: pipeline(batch_size=batch_size, generator=generator, num_inference_steps=steps,
                                    output_type='pt', return_dict=False)

  run, how = warm_up(build, compile_choice, 1)
  seconds = time_calls(lambda: run(timed_steps), 1, dev)
  return seconds / timed_steps, f'{dtype_note(dtype, "bf16 weights")}, {how}'


def release_memory() -> None:
  """Returns after handing torch's cached GPU memory back, for the rows that follow."""
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def machine() -> str:
  """Returns the platform, CPU model and count, accelerators and load average."""
  gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU for torch'
  jax_device = jax.devices()[0]
  return (f'{platform.platform()}; {machine_info.cpu_model()}; {os.cpu_count()} CPUs '
          f'({len(os.sched_getaffinity(0))} usable); torch on {gpu} ({torch.get_num_threads()} CPU threads, '
          f'OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "unset")}); JAX on {jax.device_count()} x '
          f'{jax_device.platform} ({jax_device.device_kind}); load average {machine_info.load_average()}')


def versions() -> str:
  """Returns the versions of the libraries both sides run on."""
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  cuda = f', CUDA (torch) {torch.version.cuda}' if torch.cuda.is_available() else ''
  return (f'Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, '
          f'optax {optax.__version__}, numpy {np.__version__}, torch {torch.__version__}, '
          f'diffusers {diffusers.__version__}{cuda}')
