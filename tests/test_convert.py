"""diffusers interop: import UNet2DModel weights, export DDPMPipeline folders, refuse what doesn't map.

The reference is diffusers itself: random-weight models saved with save_pretrained, loaded back
with from_pretrained, run forward in torch and compared with our U-Net on the imported weights.
"""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ddpm_jax.config import checks, convert
from ddpm_jax.core import schedules
from ddpm_jax.core.models.unet import UNet, count_params
from ddpm_jax.interop import diffusers_io
from ddpm_jax.interop import diffusers_layout
from ddpm_jax.interop import workdir_io as convert_workdir
from ddpm_jax.run import modes
from ddpm_jax.run import workdir as workdir_lib
from runs import ROOT, copy_run

# diffusion_tf's conventions, as google/ddpm-* configs spell them.
DDPM_LAYOUT = dict(flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6, attention_head_dim=None)
TINY = dict(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            down_block_types=('DownBlock2D', 'AttnDownBlock2D'), up_block_types=('AttnUpBlock2D', 'UpBlock2D'))
# google/ddpm-cifar10-32's config.
CIFAR10 = dict(sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2, norm_num_groups=32,
               down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
               up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'))
# google/ddpm-cat-256's six levels with attention at 16 px of 256, at a small width and size.
SIX_LEVELS = dict(sample_size=32, block_out_channels=(8, 8, 16, 16, 32, 32), layers_per_block=2, norm_num_groups=4,
                  down_block_types=('DownBlock2D',) * 4 + ('AttnDownBlock2D', 'DownBlock2D'),
                  up_block_types=('UpBlock2D', 'AttnUpBlock2D') + ('UpBlock2D',) * 4)


def random_unet(layout: dict, **changes) -> UNet2DModel:
  """Returns a diffusers UNet2DModel of the layout with random weights (none zero, so every tensor matters)."""
  torch.manual_seed(0)
  model = UNet2DModel(**{**DDPM_LAYOUT, **layout, **changes})
  with torch.no_grad():
    for param in model.parameters():
      param.normal_(0.0, 0.1)
  return model.eval()


def save(model: UNet2DModel, path, scheduler: DDPMScheduler | None = None) -> str:
  """Returns path after saving the model (with a scheduler: as a DDPMPipeline) there."""
  if scheduler is None:
    model.save_pretrained(str(path))
  else:
    DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(str(path))
  return str(path)


def forward_gap(config, params, model: UNet2DModel, seed: int = 0) -> float:
  """Returns max |ours - diffusers'| on one random batch at two timesteps."""
  size = config.data.image_size
  x = np.random.RandomState(seed).randn(2, 3, size, size).astype(np.float32)
  t = np.array([1, 700])
  with torch.no_grad():
    expected = model(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
  ours = UNet(diffusers_io.unet_config(config)).apply({'params': params}, jnp.asarray(x.transpose(0, 2, 3, 1)),
                                                 jnp.asarray(t))
  return float(np.abs(np.asarray(ours).transpose(0, 3, 1, 2) - expected).max())


@pytest.mark.parametrize('layout, changes', [
    (TINY, {}),
    (TINY, {'norm_eps': 1e-5}),
    (dict(TINY, block_out_channels=(16, 16), norm_num_groups=8), {'attention_head_dim': 8}),
    (SIX_LEVELS, {}),
], ids=['ddpm', 'eps1e-5', 'two_heads', 'six_levels'])
def test_imported_weights_give_diffusers_forward(tmp_path, layout, changes):
  model = random_unet(layout, **changes)
  config, params = diffusers_io.from_diffusers(save(model, tmp_path / 'unet'))
  assert config.data.image_size == layout['sample_size']
  assert count_params(params) == sum(p.numel() for p in model.parameters())
  assert forward_gap(config, params, model) < 1e-5


def test_cifar10_size_imports_with_the_papers_parameter_count(tmp_path):
  model = UNet2DModel(**DDPM_LAYOUT, **CIFAR10).eval()
  config, params = diffusers_io.from_diffusers(save(model, tmp_path / 'unet'))
  assert count_params(params) == 35_746_307
  assert (config.model.base_channels, config.model.channel_mults, config.model.attention_resolutions) == \
      (128, (1, 2, 2, 2), (16,))
  assert forward_gap(config, params, model) < 1e-5


def test_swapped_tensors_break_the_forward(tmp_path):
  model = random_unet(TINY)
  state = model.state_dict()
  first, second = 'down_blocks.0.resnets.0.conv1.weight', 'down_blocks.0.resnets.0.conv2.weight'  # same shape
  state[first], state[second] = state[second].clone(), state[first].clone()
  swapped = random_unet(TINY)
  swapped.load_state_dict(state)
  config, params = diffusers_io.from_diffusers(save(swapped, tmp_path / 'unet'))
  assert forward_gap(config, params, swapped) < 1e-5
  assert forward_gap(config, params, model) > 1e-3


def test_old_attention_names_in_a_bin_file_import(tmp_path):
  model = random_unet(TINY)
  folder = save(model, tmp_path / 'unet')
  old = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'proj_attn'}
  state = {}
  for name, value in model.state_dict().items():
    for new, previous in old.items():
      name = name.replace(f'.{new}.', f'.{previous}.')
    state[name] = value
  os.remove(os.path.join(folder, 'diffusion_pytorch_model.safetensors'))
  torch.save(state, os.path.join(folder, 'diffusion_pytorch_model.bin'))
  config, params = diffusers_io.from_diffusers(folder)
  assert forward_gap(config, params, model) < 1e-5


@pytest.mark.parametrize('scheduler, expected', [
    (dict(), dict(schedule='linear', prediction='eps', variance='beta_tilde')),
    (dict(num_train_timesteps=50, beta_schedule='squaredcos_cap_v2', prediction_type='v_prediction',
          variance_type='fixed_large', clip_sample=False),
     dict(schedule='cosine', prediction='v', variance='beta', clip_denoised=False)),
    (dict(num_train_timesteps=40, beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012,
          prediction_type='sample'), dict(schedule='trained', prediction='x0')),
], ids=['ddpm_cifar10', 'cosine_v', 'scaled_linear'])
def test_the_scheduler_sets_the_diffusion(tmp_path, scheduler, expected):
  reference = DDPMScheduler(**scheduler)
  config, _ = diffusers_io.from_diffusers(save(random_unet(TINY), tmp_path / 'pipeline', reference))
  d, s = config.diffusion, config.sampling
  assert (d.schedule, d.prediction) == (expected['schedule'], expected['prediction'])
  assert s.variance == expected.get('variance', 'beta_tilde')
  assert s.clip_denoised == expected.get('clip_denoised', True)
  assert d.num_timesteps == s.num_steps == reference.config.num_train_timesteps
  betas = d.trained_betas if d.schedule == 'trained' else schedules.make_schedule(d.schedule, d.num_timesteps).betas
  np.testing.assert_allclose(np.asarray(betas, np.float32), reference.betas.numpy(), rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize('schedule, num_timesteps, zero_terminal_snr, logsnr_shift', [
    ('linear', 1000, False, 0.0), ('linear', 100, False, 0.0), ('cosine', 100, False, 0.0), ('sigmoid', 100, False, 0.0),
    ('linear', 100, True, 0.0), ('cosine', 100, True, 2.0)])
def test_export_loads_in_diffusers_with_our_tensors_and_betas(tmp_path, schedule, num_timesteps, zero_terminal_snr,
                                                              logsnr_shift):
  model = random_unet(TINY)
  config, params = diffusers_io.from_diffusers(save(model, tmp_path / 'unet'))
  config = convert.with_values(config, {'diffusion.schedule': schedule, 'diffusion.num_timesteps': num_timesteps,
                                        'diffusion.prediction': 'v', 'diffusion.zero_terminal_snr': zero_terminal_snr,
                                        'diffusion.logsnr_shift': logsnr_shift})
  out = diffusers_io.to_diffusers(config, params, str(tmp_path / 'export'))
  pipeline = DDPMPipeline.from_pretrained(out)
  exported, original = pipeline.unet.state_dict(), model.state_dict()
  assert set(exported) == set(original)
  assert all(torch.equal(exported[name], original[name]) for name in original)
  ours = np.asarray(schedules.make_schedule(schedule, num_timesteps, zero_terminal_snr=zero_terminal_snr,
                                            logsnr_shift=logsnr_shift).betas)
  # diffusers rescales to zero terminal SNR in float32 (we in float64): its small betas are off by ~2e-7.
  np.testing.assert_allclose(pipeline.scheduler.betas.numpy(), ours, rtol=1e-5, atol=5e-7 if zero_terminal_snr else 1e-9)
  assert diffusers_io.from_diffusers(out)[0].diffusion.zero_terminal_snr == zero_terminal_snr
  assert pipeline.scheduler.config.prediction_type == 'v_prediction'
  images = pipeline(batch_size=2, num_inference_steps=3, output_type='np').images
  assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()


@pytest.mark.parametrize('changes, named', [
    ({'resnet_time_scale_shift': 'spatial'}, 'resnet_time_scale_shift'),
    # diffusers' middle attention then has no GroupNorm; ours has.
    ({'resnet_time_scale_shift': 'scale_shift'}, 'attn_norm_num_groups'),
    ({'flip_sin_to_cos': True}, 'flip_sin_to_cos'),  # with freq_shift=1: neither DDPM's sinusoids nor ADM's
    ({'downsample_padding': 1}, 'downsample_padding'),
    ({'down_block_types': ('DownBlock2D', 'SkipDownBlock2D')}, 'down_block_types[1]'),
    ({'up_block_types': ('UpBlock2D', 'UpBlock2D')}, 'up_block_types[0]'),
    ({'block_out_channels': (8, 12), 'norm_num_groups': 4}, 'block_out_channels'),
    ({'downsample_type': 'resnet'}, 'upsample_type'),  # model.resblock_updown resamples both paths alike
    ({'downsample_type': 'resnet', 'upsample_type': 'resnet'}, 'down_block_types[0]'),  # DownBlock2D: a conv
    ({'attention_head_dim': 3}, 'attention_head_dim'),
    ({'class_embed_type': 'timestep', 'num_class_embeds': 4}, 'class_embed_type'),
    ({'num_class_embeds': 4, '_null_class': 2}, '_null_class'),  # our exports' null class is the last row
])
def test_a_config_the_unet_cannot_express_is_refused(tmp_path, changes, named):
  folder = save(random_unet(TINY), tmp_path / 'unet')
  path = os.path.join(folder, 'config.json')
  with open(path) as f:
    config = json.load(f)
  with open(path, 'w') as f:
    json.dump({**config, **changes}, f)
  with pytest.raises(ValueError, match=named.replace('[', r'\[').replace(']', r'\]')) as error:
    convert_workdir.import_to_workdir(folder, str(tmp_path / 'w'))
  assert '\n' not in str(error.value)
  assert not os.path.exists(tmp_path / 'w')


def test_bad_sources_are_one_line_and_write_nothing(tmp_path, monkeypatch):
  weights_as_text = save(random_unet(TINY), tmp_path / 'text')
  with open(os.path.join(weights_as_text, 'diffusion_pytorch_model.safetensors'), 'w') as f:
    f.write('not a tensor file')
  pickled = save(random_unet(TINY), tmp_path / 'pickled')
  os.remove(os.path.join(pickled, 'diffusion_pytorch_model.safetensors'))
  torch.save({'conv_in.weight': torch.zeros(1), 'code': print}, os.path.join(pickled, 'diffusion_pytorch_model.bin'))
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
  cases = [(str(tmp_path / 'missing'), 'no such file or folder'),
           (os.path.join(weights_as_text, 'config.json'), 'is a file'),
           (str(tmp_path), 'neither unet/config.json'),
           (weights_as_text, 'not a readable safetensors'),
           (pickled, 'not a readable bin'),
           ('google/ddpm-cifar10-32', 'cannot fetch it from the Hub')]
  for source, message in cases:
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
      convert_workdir.import_to_workdir(source, str(tmp_path / 'w'), cache_dir=str(tmp_path / 'hub'))
    assert '\n' not in str(error.value), source
  assert not os.path.exists(tmp_path / 'w')


def hub_cache(tmp_path, repo_id: str, folder: str) -> str:
  """Returns a Hugging Face cache holding folder's files as repo_id's main revision (the layout the Hub writes)."""
  cache = tmp_path / 'hub'
  repo = cache / f'models--{repo_id.replace("/", "--")}'
  commit = '0' * 40
  (repo / 'refs').mkdir(parents=True)
  (repo / 'refs' / 'main').write_text(commit)
  snapshot = repo / 'snapshots' / commit
  for root, _, files in os.walk(folder):
    for name in files:
      target = snapshot / os.path.relpath(os.path.join(root, name), folder)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(open(os.path.join(root, name), 'rb').read())
  return str(cache)


def test_a_cached_hub_id_imports_offline(tmp_path, monkeypatch):
  model = random_unet(TINY)
  cache = hub_cache(tmp_path, 'google/ddpm-tiny', save(model, tmp_path / 'pipeline', DDPMScheduler()))
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
  config, params = diffusers_io.from_diffusers('google/ddpm-tiny', cache_dir=cache)
  assert forward_gap(config, params, model) < 1e-5


def test_an_imported_workdir_samples_with_its_own_config(tmp_path):
  model = random_unet(TINY)
  workdir = str(tmp_path / 'w')
  scheduler = DDPMScheduler(num_train_timesteps=20)
  convert_workdir.import_to_workdir(save(model, tmp_path / 'pipeline', scheduler), workdir)
  config = workdir_lib.load_config(workdir)
  assert config.diffusion.num_timesteps == 20
  config = convert.with_values(config, {'sampling.num_samples': 2, 'sampling.batch_size': 2})
  with pytest.raises(ValueError, match='already holds a run'):
    convert_workdir.import_to_workdir(str(tmp_path / 'pipeline'), workdir)
  run = modes.open_trained_run(config, workdir)
  state = run.restore()
  assert int(state.step) == 0
  np.testing.assert_array_equal(np.asarray(state.params['conv_out']['bias']), model.conv_out.bias.detach().numpy())
  np.testing.assert_array_equal(np.asarray(state.ema_params['conv_out']['bias']),
                                model.conv_out.bias.detach().numpy())
  path = modes.sample(config, workdir)
  assert os.path.isfile(path)
  spec = importlib.util.spec_from_file_location('paper', os.path.join(ROOT, 'configs', 'cifar10_ddpm_paper.py'))
  preset = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(preset)
  paper = preset.get_config(workdir)
  assert (paper.eval.protocol, paper.eval.paper_variance, paper.diffusion.num_timesteps) == ('paper', 'beta', 20)
  paper = convert.from_configdict(paper)
  checks.validate_config(paper)
  assert set(workdir_lib.check_config(workdir, paper, True)) == {'eval.protocol', 'eval.batch_size'}  # free keys


def test_export_of_a_trained_run_and_its_refusals(trained, tmp_path):
  out = str(tmp_path / 'export')
  convert_workdir.export_workdir(trained, out)
  with open(os.path.join(out, 'README.md')) as f:
    card = f.read()
  assert 'step 4' in card and 'DDPMPipeline' in card
  config, params = diffusers_io.from_diffusers(out)
  state = modes.open_trained_run(workdir_lib.load_config(trained), trained).restore()
  for a, b in zip(*(jax_leaves(tree) for tree in (params, state.ema_params))):
    np.testing.assert_array_equal(a, b)
  assert config.diffusion.schedule == workdir_lib.load_config(trained).diffusion.schedule
  with pytest.raises(ValueError, match='not empty'):
    convert_workdir.export_workdir(trained, out)
  convert_workdir.export_workdir(trained, out, params='raw', overwrite=True)
  other = tmp_path / 'other'
  other.mkdir()
  (other / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match='no earlier export'):
    convert_workdir.export_workdir(trained, str(other), overwrite=True)
  assert (other / 'notes.txt').read_text() == 'mine'
  with pytest.raises(ValueError, match='holds the workdir'):
    convert_workdir.export_workdir(trained, os.path.dirname(trained), overwrite=True)


def test_the_model_card_lists_metrics_alone_and_the_step_exported_past_a_damaged_one(trained, tmp_path):
  workdir = copy_run(trained, tmp_path / 'run')
  evaluation = {'fid': 12.5, 'kid_mean': 0.01, 'kid_std': 0.002, 'ms_ssim': 0.3, 'eta': 0.0, 'num_samples': 8,
                'num_reference': 8, 'sampling_steps': 3, 'sampler': 'ddim', 'kid_subset_size': 8,
                'reference_split': 'test', 'protocol': 'fast', 'standin_inception': True, 'inception_sha256': 'ab' * 32}
  os.makedirs(os.path.join(workdir, 'eval'))
  with open(os.path.join(workdir, 'eval', 'step_2.json'), 'w') as f:
    json.dump({'step': 2, **evaluation}, f)
  # The newest checkpoint is damaged: the export falls back to step 2. Every data file, not the largest alone:
  # which file holds the EMA params (what an export reads) varies with the order Orbax's writes finished in.
  for data_file in glob.glob(os.path.join(workdir, 'checkpoints', '4', 'state', '**', 'd', '*'), recursive=True):
    with open(data_file, 'r+b') as f:
      f.truncate(os.path.getsize(data_file) // 2)
  out = convert_workdir.export_workdir(workdir, str(tmp_path / 'export'))
  with open(os.path.join(out, 'README.md')) as f:
    card = f.read()
  rows = [line.split(' | ')[0].strip('| ') for line in card.splitlines() if line.startswith('| ') and
          not line.startswith('| metric')]
  assert rows == ['fid (stand-in Inception)', 'kid_mean (stand-in Inception)', 'kid_std (stand-in Inception)',
                  'ms_ssim']  # settings (eta, subset size, n, num_reference) are not metrics
  assert '- exported: the EMA params of step 2 (the newest checkpoint, step 4, could not be read' in card
  assert 'Stand-in Inception weights' in card and 'Scored from 8 samples, ddim 3 steps, against test (8 images)' in card


def jax_leaves(tree) -> list:
  """Returns a params tree's leaves as numpy, in path order."""
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def test_unet_defaults_table_is_diffusers_own():
  import inspect  # pylint: disable=g-import-not-at-top
  defaults = {k: v.default for k, v in inspect.signature(UNet2DModel.__init__).parameters.items() if k != 'self'}
  assert defaults == diffusers_layout.UNET_DEFAULTS


def test_the_cli_answers_a_bad_source_or_command_with_one_line_and_exit_2(env, tmp_path):
  def convert_cli(*args):
    return subprocess.run([sys.executable, '-m', 'ddpm_jax.convert', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)

  missing = convert_cli('import', f'--source={tmp_path}/nothing', f'--workdir={tmp_path}/w')
  lines = [line for line in missing.stderr.splitlines() if line.startswith('ddpm_jax.convert: error:')]
  assert missing.returncode == 2 and len(lines) == 1 and 'no such file or folder' in lines[0], missing.stderr
  assert 'Traceback' not in missing.stderr and not os.path.exists(tmp_path / 'w')
  unknown = convert_cli('upload', f'--workdir={tmp_path}/w')
  assert unknown.returncode == 2 and 'give one command, import or export' in unknown.stderr
