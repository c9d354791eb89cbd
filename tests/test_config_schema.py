"""The typed config: every key declared once, checked at start-up wherever it comes from, documented from the schema."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

import clitools
import runs
from configs import default
from ddpm_jax.config import checks, convert, reference, schema
from ddpm_jax.core import sampler, train_step
from ddpm_jax.core.models.unet import UNetConfig
from ddpm_jax.run import build, workdir as workdir_lib

# The bad values a review found passing the old start-up checks (some failing 15,000 steps in), and a typo.
BAD_VALUES = [
    ('eval.batch_size', 0, 'eval.batch_size=0 must be >= 1'),
    ('training.batch_size', 0, 'training.batch_size=0 must be >= 1'),
    ('eval.num_samples', 0, 'eval.num_samples=0 must be >= 2'),
    ('eval.num_reference', 0, 'eval.num_reference=0 must be >= 2'),
    ('eval.ms_ssim_pairs', -1, 'eval.ms_ssim_pairs=-1 must be >= 1'),
    ('training.grad_clip', -1, 'training.grad_clip=-1 must be >= 0'),
    ('sampling.eta', -5, 'sampling.eta=-5 must lie in [0, 1]'),
    ('sampling.clip_denoised', 'yes', "sampling.clip_denoised='yes' must be True or False"),
    ('seed', 'abc', "seed='abc' must be an integer"),
    ('data.split_seed', 'x', "data.split_seed='x' must be an integer"),
    ('model.remat', 3, 'model.remat=3 must be True or False'),
    ('eval.sampling.num_steps', 0, 'eval.sampling.num_steps=0 must be >= 1'),
    ('diffusion.huber_delta', 0.0, 'diffusion.huber_delta=0.0 must be > 0'),
    ('training.ema_decay', 1.0, 'training.ema_decay=1.0 must lie in [0, 1)'),
    ('model.dtype', 'float8', "model.dtype='float8' is not one of {'float32', 'bfloat16', 'float16'}"),
    ('eval.metrics', ('fid', 'fjd'), "eval.metrics: unknown metric 'fjd'; known: fid, kid"),
    ('eval.metrics', (), 'eval.metrics: no metric chosen'),
    ('model.channel_mults', 'abc', "model.channel_mults='abc' must be a tuple of integers"),
    ('training.label_dropout', 1.0, 'training.label_dropout=1.0 must lie in [0, 1)'),
    ('sampling.guidance_scale', -1.0, 'sampling.guidance_scale=-1.0 must be >= 0'),
]


def keys_of(cls, prefix=''):
  """Returns every dotted key of a section, sub-sections expanded."""
  found = []
  for name, (_, kind) in convert.section_fields(cls).items():
    found += keys_of(kind, f'{prefix}{name}.') if convert.is_section(kind) else [f'{prefix}{name}']
  return found


@pytest.mark.parametrize('key, value, message', BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_key_the_value_and_what_is_valid(key, value, message):
  with pytest.raises(ValueError) as error:
    convert.with_values(schema.Config(), {key: value})
  assert str(error.value).startswith(message) and '\n' not in str(error.value)


def test_a_misspelt_key_in_a_config_file_names_the_real_one():
  config = default.get_config()
  config.training.num_step = 5  # a ConfigDict takes a new key silently; the typed config does not
  with pytest.raises(ValueError, match=r'^training.num_step is not a config key; did you mean training.num_steps\?$'):
    convert.from_configdict(config)
  config = default.get_config()
  config.evaluation = {'every_steps': 0}
  with pytest.raises(ValueError, match='^evaluation is not a config key; the keys of the config are seed, data, .*eval'):
    convert.from_configdict(config)


def test_a_config_json_written_before_a_default_changed_keeps_what_its_run_trained_with():
  saved = convert.to_dict(schema.Config())
  del saved['diffusion']['prediction']  # as versions before the key existed, which trained eps
  assert convert.from_mapping(convert.migrate(saved)).diffusion.prediction == 'eps'
  assert schema.Config().diffusion.prediction == 'v'


def test_a_renamed_key_says_where_it_lives_now():
  with pytest.raises(ValueError, match='eval.sampling_steps was renamed eval.sampling.num_steps'):
    convert.with_values(schema.Config(), {'eval.sampling_steps': 10})


def test_the_defaults_round_trip_and_every_key_has_a_doc():
  config = convert.from_configdict(default.get_config())
  assert config == schema.Config()
  assert convert.from_mapping(json.loads(json.dumps(convert.to_dict(config)))) == config
  for row in reference.rows():
    assert row.doc, row.key
  assert len(reference.rows()) == len(keys_of(schema.Config))


def test_the_core_sections_are_the_schemas_own():
  config = schema.Config()
  assert type(config.model) is UNetConfig  # pylint: disable=unidiomatic-typecheck
  assert set(f.name for f in dataclasses.fields(sampler.SamplerSettings)) <= set(convert.section_fields(
      schema.SamplingConfig))
  assert type(config.eval.sampling) is sampler.SamplerSettings  # pylint: disable=unidiomatic-typecheck


def test_the_objective_carries_every_training_option_of_the_config():
  config = convert.with_values(schema.Config(), {'diffusion.loss': 'huber', 'diffusion.huber_delta': 0.25,
                                                 'training.grad_accum_steps': 2, 'diffusion.offset_noise': 0.1,
                                                 'model.num_classes': 5, 'training.label_dropout': 0.2})
  objective = build.objective(config)
  assert objective == train_step.Objective(loss='huber', prediction='v', loss_weighting='none', min_snr_gamma=5.0,
                                           huber_delta=0.25, offset_noise=0.1, ema_decay=0.9999, ema_warmup=True,
                                           grad_accum_steps=2, label_dropout=0.2, null_label=5)


def test_which_keys_may_change_on_resume_is_a_property_of_the_option():
  free = {key for key in keys_of(schema.Config) if convert.is_free(key)}
  assert {'training.num_steps', 'training.log_every_steps', 'data.data_dir', 'eval.sampling.eta',
          'sampling.sampler', 'logging.wandb'} <= free
  assert not free & {'seed', 'training.batch_size', 'training.learning_rate', 'model.base_channels',
                     'diffusion.schedule', 'data.dataset', 'data.image_size'}
  assert not convert.is_free('training.num_steps_extra')


def old_config_json() -> dict:
  """Returns a config.json as versions before eval.sampling wrote it."""
  saved = workdir_lib.as_json(runs.tiny_config({'sampling.eta': 0.5, 'sampling.variance': 'beta'}))
  sampling = saved['eval'].pop('sampling')
  saved['eval'].update(sampler='ddim', sampling_steps=7, timestep_spacing='trailing')
  assert sampling['num_steps'] != 7
  return saved


def test_a_config_json_of_an_older_version_reads_with_its_keys_moved(tmp_path):
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(old_config_json(), f)
  config = workdir_lib.load_config(str(tmp_path))
  # Before eval.sampling, evaluations took variance, eta and clipping from config.sampling.
  assert config.eval.sampling == sampler.SamplerSettings(sampler='ddim', num_steps=7, variance='beta', eta=0.5,
                                                         clip_denoised=True, timestep_spacing='trailing')
  assert workdir_lib.config_changes(old_config_json(), workdir_lib.as_json(config)) == {}


def test_an_unknown_key_in_config_json_is_refused_naming_the_file(tmp_path):
  saved = workdir_lib.as_json(runs.tiny_config())
  saved['training']['learning_rat'] = 0.1
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(saved, f)
  with pytest.raises(ValueError, match=f'training.learning_rat in {tmp_path}/config.json is not a config key; '
                                       'did you mean training.learning_rate'):
    workdir_lib.load_config(str(tmp_path))


def test_the_readme_config_reference_is_the_schemas():
  with open(os.path.join(runs.ROOT, 'README.md')) as f:
    readme = f.read()
  assert reference.markdown() in readme, 'run: python -m ddpm_jax.config.reference --readme README.md'


def test_a_typo_or_bad_value_from_the_command_line_stops_before_anything_is_written(env, tmp_path):
  typo = tmp_path / 'typo.py'
  typo.write_text('from configs import quickstart\n\ndef get_config():\n  config = quickstart.get_config()\n'
                  '  config.training.num_step = 5\n  return config\n')
  for args, expected in [
      ((f'--config={typo}',), 'training.num_step is not a config key; did you mean training.num_steps?'),
      (('--config.sampling.eta=-5',), 'sampling.eta=-5.0 must lie in [0, 1]'),
  ]:
    workdir = tmp_path / 'run'
    config = args[0].removeprefix('--config=') if args[0].startswith('--config=') else clitools.TINY
    result = subprocess.run([sys.executable, '-m', 'ddpm_jax.main', f'--config={config}', f'--workdir={workdir}',
                             *[a for a in args if not a.startswith('--config=')]],
                            cwd=runs.ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert clitools.error_line(result.stderr) == f'ddpm_jax: error: {expected}'
    assert not workdir.exists()


def test_helpconfig_lists_every_key_and_exits_0(env):
  result = subprocess.run([sys.executable, '-m', 'ddpm_jax.main', '--helpconfig'], cwd=runs.ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  for key in keys_of(schema.Config):
    assert f'  {key} = ' in result.stdout


def test_an_unknown_override_gets_the_schemas_one_line():
  from ddpm_jax import main  # pylint: disable=g-import-not-at-top
  assert main.unknown_override(['main', '--config=c.py', '--config.eval.sampler=ddim']) == (
      'eval.sampler (a --config override) was renamed eval.sampling.sampler; set that instead')
  assert main.unknown_override(['main', '--config.training.num_stepz=3']) == (
      'training.num_stepz (a --config override) is not a config key; did you mean training.num_steps?')
  assert main.unknown_override(['main', '--config.training.num_steps=3', '--config.eval.sampling.eta=1']) == ''


UNCONDITIONAL = 'needs a class-conditional model, but model.num_classes=0 (unconditional); set model.num_classes'
GUIDANCE_ERRORS = [  # the tiny config: T = 100, model.num_classes = 0 unless set
    ({'sampling.guidance_scale': 3.0}, f'sampling.guidance_scale=3.0 {UNCONDITIONAL}'),
    ({'eval.guidance_scale': 0.0}, f'eval.guidance_scale=0.0 {UNCONDITIONAL}'),
    ({'eval.guidance_scales': (1.0, 3.0)}, f'eval.guidance_scales=(1.0, 3.0) {UNCONDITIONAL}'),
    ({'sampling.labels': (1, 'cat')}, f"sampling.labels=(1, 'cat') {UNCONDITIONAL}"),
    ({'eval.guidance_interval': (10, 50)}, f'eval.guidance_interval=(10, 50) {UNCONDITIONAL}'),
    ({'model.num_classes': 4, 'sampling.labels': (0, 'cat', 4)},
     "sampling.labels=(0, 'cat', 4): class 4 is out of range for model.num_classes=4; valid: ids 0..3 or class names"),
    ({'model.num_classes': 4, 'sampling.guidance_interval': (10,)},
     'sampling.guidance_interval=(10,) must be () or two timesteps (t_lo, t_hi)'),
    ({'model.num_classes': 4, 'eval.guidance_interval': (60, 20)},
     'eval.guidance_interval=(60, 20) must have 0 <= t_lo <= t_hi < diffusion.num_timesteps=100'),
    ({'model.num_classes': 4, 'sampling.guidance_interval': (0, 100)},
     'sampling.guidance_interval=(0, 100) must have 0 <= t_lo <= t_hi < diffusion.num_timesteps=100'),
]


@pytest.mark.parametrize('overrides, message', GUIDANCE_ERRORS)
def test_guidance_on_an_unconditional_model_or_a_bad_interval_or_class_id_is_one_line(overrides, message):
  with pytest.raises(ValueError) as error:
    checks.validate_config(runs.tiny_config(overrides))
  assert str(error.value).startswith(message) and '\n' not in str(error.value)


def test_guidance_keys_that_fit_the_model_pass_and_label_dropout_is_ignored_without_classes():
  checks.check_guidance(runs.tiny_config({'model.num_classes': 4, 'sampling.guidance_scale': 3.0,
                                          'sampling.guidance_interval': (0, 99), 'sampling.labels': (3, 'cat'),
                                          'eval.guidance_scales': (0.0, 1.0, 3.0)}))
  checks.check_guidance(runs.tiny_config({'training.label_dropout': 0.5}))  # num_classes=0: no labels to drop
