"""The configs: each loads and validates, the study's six are three-key diffs of default, the extended study's
change only what they test of their base run, the class-conditional ones only what conditioning (or ADM) needs
and have their dataset's class count, CIFAR-10's U-Net size; and scripts/run_study.sh, which trains the six (or,
with --extended, the extended ones) and reports on them."""
import functools
import glob
import importlib
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import pytest

from configs import default, study
from ddpm_jax.config import checks, convert
from ddpm_jax.core.models.unet import UNet, count_params
from ddpm_jax.run.workdir import flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                      # These read a workdir (test_main, test_convert, test_workdir).
                      if not p.endswith(('__init__.py', 'workdir.py', 'cifar10_ddpm_paper.py', 'quickstart_eval.py')))
# The study: three schedules and two losses on default's model and data; the two flagship runs train twice as long.
STUDY = {
    'linear_mse': ('linear', 'mse', 300_000),
    'linear_mae': ('linear', 'mae', 300_000),
    'cosine_mse': ('cosine', 'mse', 300_000),
    'sigmoid_mse': ('sigmoid', 'mse', 300_000),
    'cosine_mae': ('cosine', 'mae', 600_000),
    'sigmoid_mae': ('sigmoid', 'mae', 600_000),
}
STUDY_KEYS = {'diffusion.schedule', 'diffusion.loss', 'training.num_steps'}
# The extended study (configs/ext_*.py): {name: (the study run it is compared with, what it sets)}, in the order
# run_study.sh --extended trains them.
EXTENDED = {
    'ext_cosine_v': ('cosine_mse', {'diffusion.prediction': 'v'}),
    'ext_cosine_v_min_snr': ('cosine_mse', {'diffusion.prediction': 'v', 'diffusion.loss_weighting': 'min_snr',
                                            'diffusion.min_snr_gamma': 5.0}),
    'ext_linear_zero_snr_v': ('linear_mse', {'diffusion.zero_terminal_snr': True, 'diffusion.prediction': 'v',
                                             'eval.sampling.timestep_spacing': 'trailing'}),
    'ext_linear_offset': ('linear_mse', {'diffusion.offset_noise': 0.1}),
    'ext_cosine_mae_offset': ('cosine_mae', {'diffusion.offset_noise': 0.1}),
}


def load(name: str):
  """Returns the typed config of configs/<name>.py (every key checked)."""
  return convert.from_configdict(importlib.import_module(f'configs.{name}').get_config())


def test_every_study_config_exists():
  assert set(STUDY) <= set(CONFIG_NAMES)


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_config_loads_and_validates(name):
  checks.validate_config(load(name))


def resolved(get_config) -> dict:
  """Returns a config file's get_config() as the typed config's flat {'section.key': value}."""
  return flatten(convert.to_dict(convert.from_configdict(get_config())))


@pytest.mark.parametrize('name', sorted(STUDY))
def test_study_config_differs_from_the_study_base_only_in_schedule_loss_and_steps(name):
  config, base = flatten(convert.to_dict(load(name))), resolved(study.get_config)
  changed = {key for key in config.keys() | base.keys() if config.get(key) != base.get(key)}
  assert changed <= STUDY_KEYS, f'{name} also changes {sorted(changed - STUDY_KEYS)}'
  assert tuple(config[key] for key in ('diffusion.schedule', 'diffusion.loss', 'training.num_steps')) == STUDY[name]


def test_a_new_config_inherits_the_faster_recipe_and_the_study_base_pins_the_studys():
  base, package = resolved(study.get_config), resolved(default.get_config)
  changed = {key: (base[key], package[key]) for key in base if base[key] != package[key]}
  assert changed == {'diffusion.prediction': ('eps', 'v')}


# Every key of the study's six configs as they resolved at 3f4935c (before the defaults outside the study moved on):
# the study compares schedules and losses, so what it trained must not drift with the package's defaults.
STUDY_RESOLVED = os.path.join(ROOT, 'tests', 'configs', 'study_resolved.json')


@pytest.mark.parametrize('name', sorted(STUDY))
def test_study_config_resolves_to_what_the_study_trained(name):
  with open(STUDY_RESOLVED) as f:
    recorded = flatten(json.load(f)[name])
  config = flatten(convert.to_dict(load(name)))
  # Keys added since default to what the study did without them; a key the study had must keep its value.
  changed = {key: (recorded[key], config.get(key, 'missing')) for key in recorded
             if config.get(key, 'missing') != (tuple(recorded[key]) if isinstance(recorded[key], list)
                                               else recorded[key])}
  assert not changed, f'{name} changed (recorded, now): {changed}'


def test_every_extended_config_is_listed():
  assert set(EXTENDED) == {name for name in CONFIG_NAMES if name.startswith('ext_')}


@pytest.mark.parametrize('name', sorted(EXTENDED))
def test_extended_config_differs_from_its_base_run_only_in_what_it_tests(name):
  base_name, sets = EXTENDED[name]
  config, base = flatten(convert.to_dict(load(name))), flatten(convert.to_dict(load(base_name)))
  changed = {key for key in config.keys() | base.keys() if config.get(key) != base.get(key)}
  assert changed <= set(sets), f'{name} also changes {sorted(changed - set(sets))}'
  assert {key: config[key] for key in sets} == sets
  assert changed, f'{name} is {base_name}'
  doc = importlib.import_module(f'configs.{name}').__doc__
  assert f'configs/{base_name}.py' in doc, f"{name}'s docstring does not name its base run"


# The class-conditional configs: {name: (the config it starts from, what it sets)}.
FOOD101_CFG = {'model.num_classes': 101, 'sampling.guidance_scale': 2.0, 'eval.guidance_scales': (1.0, 1.5, 2.0, 3.0),
               'eval.metrics': ('fid', 'kid', 'ms_ssim', 'artefacts', 'isc', 'prc')}
CONDITIONAL = {
    'food101_cfg': ('cosine_mae', {**FOOD101_CFG, 'diffusion.prediction': 'v', 'diffusion.loss': 'mse'}),
    'cifar10_cfg': ('cifar10_ddpm', {**FOOD101_CFG, 'model.num_classes': 10, 'diffusion.prediction': 'v',
                                     'eval.sampling.sampler': 'dpmpp_2m', 'eval.sampling.num_steps': 20,
                                     'eval.sampling.variance': 'beta_tilde'}),
    'food101_adm': ('food101_cfg', {'model.scale_shift_norm': True, 'model.resblock_updown': True,
                                    'model.num_head_channels': 64, 'model.attention_resolutions': (32, 16, 8),
                                    'model.time_embedding': 'adm'}),
}


@pytest.mark.parametrize('name', sorted(CONDITIONAL))
def test_class_conditional_config_differs_from_its_parent_only_in_what_it_sets(name):
  parent, sets = CONDITIONAL[name]
  config, base = flatten(convert.to_dict(load(name))), flatten(convert.to_dict(load(parent)))
  changed = {key for key in config.keys() | base.keys() if config.get(key) != base.get(key)}
  assert changed == set(sets), f'{name} changes {sorted(changed)}'
  assert {key: config[key] for key in sets} == sets
  assert config['training.label_dropout'] == 0.1
  assert f'configs/{parent}.py' in importlib.import_module(f'configs.{name}').__doc__


@pytest.mark.parametrize('name', sorted(CONDITIONAL))
def test_class_conditional_config_has_as_many_classes_as_its_dataset(name):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = load(name)
  dataset = config.data.dataset.removeprefix('tfds:')
  # TFDS's own metadata, shipped with the package: no download.
  assert config.model.num_classes == tfds.builder(dataset).info.features['label'].num_classes


@functools.lru_cache(maxsize=None)
def cifar_config():
  return load('cifar10_ddpm')


def test_cifar10_unet_has_the_papers_35_7m_parameters():
  config = cifar_config()
  size = config.data.image_size
  init = functools.partial(UNet(config.model).init, train=False)
  shapes = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1,), jnp.int32))
  assert abs(count_params(shapes['params']) - 35.7e6) <= 0.1e6


def test_cifar10_config_has_the_papers_training_and_sampling():
  config = flatten(convert.to_dict(cifar_config()))
  expected = {
      'data.dataset': 'tfds:cifar10', 'data.image_size': 32, 'data.random_flip': True,
      'diffusion.schedule': 'linear', 'diffusion.num_timesteps': 1000, 'diffusion.loss': 'mse',
      'diffusion.prediction': 'eps', 'training.learning_rate': 2e-4, 'training.warmup_steps': 5000,
      'training.grad_clip': 1.0, 'training.batch_size': 128, 'training.num_steps': 800_000,
      'training.ema_decay': 0.9999, 'sampling.sampler': 'ddpm', 'sampling.num_steps': 1000,
      'sampling.variance': 'beta', 'model.dropout': 0.1, 'model.num_heads': 1,
  }
  assert {key: config[key] for key in expected} == expected


def run_study(tmp_path, fail_on: str = '', *args, study_dir: str = 'S'):
  """Returns the finished scripts/run_study.sh with `python` stubbed to log its arguments, and the log's lines."""
  stub, log = tmp_path / 'bin', tmp_path / 'calls.log'
  stub.mkdir()
  (stub / 'python').write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n'
                               f'[[ -n "{fail_on}" && "$*" == *"{fail_on}"* ]] && exit 1\nexit 0\n')
  (stub / 'python').chmod(0o755)
  env = dict(os.environ, PATH=f'{stub}:{os.environ["PATH"]}', STUDY_DIR=study_dir, REPORT_DIR='R')
  result = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'run_study.sh'), *args], env=env,
                          capture_output=True, text=True, timeout=60)
  return result, log.read_text().splitlines()


def test_run_study_trains_the_six_configs_with_the_overrides_then_reports(tmp_path):
  result, calls = run_study(tmp_path, '', '--config.data.data_dir=/data', '--config.seed=3')
  assert result.returncode == 0, result.stderr
  assert calls[:-1] == [f'-m ddpm_jax.main --config=configs/{name}.py --workdir=S/{name} '
                        '--config.data.data_dir=/data --config.seed=3' for name in STUDY]
  assert calls[-1] == '-m ddpm_jax.report --workdirs ' + ' '.join(f'S/{name}' for name in STUDY) + ' --out R'


def test_run_study_stops_at_a_failed_run(tmp_path):
  result, calls = run_study(tmp_path, 'cosine_mse')
  assert result.returncode != 0
  assert [call.split()[2] for call in calls] == ['--config=configs/linear_mse.py', '--config=configs/linear_mae.py',
                                                '--config=configs/cosine_mse.py']


def test_run_study_extended_trains_the_extended_configs_then_reports_on_every_run_present(tmp_path):
  study = tmp_path / 'S'
  for name in ('linear_mse', 'cosine_mae'):  # two of the six trained; the rest absent or never started
    (study / name).mkdir(parents=True)
    (study / name / 'config.json').write_text('{}')
  (study / 'cosine_mse').mkdir()
  result, calls = run_study(tmp_path, '', '--config.seed=3', '--extended', '--config.data.data_dir=/d',
                            study_dir=str(study))
  assert result.returncode == 0, result.stderr
  assert calls[:-1] == [f'-m ddpm_jax.main --config=configs/{name}.py --workdir={study}/{name} --config.seed=3 '
                        '--config.data.data_dir=/d' for name in EXTENDED]
  reported = ['linear_mse', 'cosine_mae', *EXTENDED]
  assert calls[-1] == '-m ddpm_jax.report --workdirs ' + ' '.join(f'{study}/{name}' for name in reported) + ' --out R'


def test_cudnn_attention_is_a_config_error_unless_the_backend_is_a_gpu():
  config = default.get_config()
  config.model.attention_impl = 'cudnn'
  backend = jax.default_backend()
  if backend == 'gpu':  # CI has none; on a GPU machine the same config passes
    checks.validate_config(convert.from_configdict(config))
  else:
    refusal = rf"model.attention_impl='cudnn' needs an NVIDIA GPU \(this run's backend is {backend}\)"
    with pytest.raises(ValueError, match=refusal):
      checks.validate_config(convert.from_configdict(config))
  config.model.attention_impl = 'xla'
  checks.validate_config(convert.from_configdict(config))
