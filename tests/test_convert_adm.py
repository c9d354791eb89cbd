"""diffusers interop of ADM's U-Net options (issue 21): each layout diffusers writes forwards as ours, both ways.

The reference is diffusers' UNet2DModel: random weights saved with save_pretrained, imported,
run forward in torch and in our U-Net with class labels; then our export loaded back with
from_pretrained and run forward again.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from ddpm_jax.core.models.unet import UNet, count_params
from ddpm_jax.interop import diffusers_io
from ddpm_jax.interop import diffusers_layout
from test_convert import TINY, random_unet, save

ATTEND_BOTH = dict(down_block_types=('AttnDownBlock2D',) * 2, up_block_types=('AttnUpBlock2D',) * 2)
RESNET_UPDOWN = dict(downsample_type='resnet', upsample_type='resnet',
                     down_block_types=('ResnetDownsampleBlock2D', 'AttnDownBlock2D'),
                     up_block_types=('AttnUpBlock2D', 'ResnetUpsampleBlock2D'))
# diffusers' mid-block attention has a GroupNorm under 'scale_shift' only when told its groups.
SCALE_SHIFT = dict(resnet_time_scale_shift='scale_shift', attn_norm_num_groups=4)
ADM_TIME = dict(flip_sin_to_cos=True, freq_shift=0)
# openai/diffusers-cd_imagenet64_l2's unet/config.json (diffusers' consistency-model conversion of ADM's ImageNet-64).
CD_IMAGENET64 = {
    '_class_name': 'UNet2DModel', '_diffusers_version': '0.21.0.dev0', '_name_or_path': 'cd_imagenet64_l2/unet',
    'act_fn': 'silu', 'add_attention': True, 'attention_head_dim': 64, 'attn_norm_num_groups': 32,
    'block_out_channels': [192, 384, 576, 768], 'center_input_sample': False, 'class_embed_type': None,
    'down_block_types': ['ResnetDownsampleBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'],
    'downsample_padding': 1, 'downsample_type': 'resnet', 'flip_sin_to_cos': True, 'freq_shift': 0, 'in_channels': 3,
    'layers_per_block': 3, 'mid_block_scale_factor': 1, 'norm_eps': 1e-05, 'norm_num_groups': 32,
    'num_class_embeds': 1000, 'out_channels': 3, 'resnet_time_scale_shift': 'scale_shift', 'sample_size': 64,
    'time_embedding_type': 'positional',
    'up_block_types': ['AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D', 'ResnetUpsampleBlock2D'],
    'upsample_type': 'resnet',
}


def sharp_attention(model: UNet2DModel) -> UNet2DModel:
  """Returns the model with its query and key weights x10: N(0, 0.1) ones attend near uniformly, hiding the heads."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      if '.to_q.' in name or '.to_k.' in name:
        param.mul_(10.0)
  return model


def diffusers_forward(model: UNet2DModel, x: np.ndarray, t: np.ndarray, labels) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(x), torch.from_numpy(t),
                 class_labels=None if labels is None else torch.from_numpy(labels)).sample.numpy()


def our_forward(model_config, params, x: np.ndarray, t: np.ndarray, labels) -> np.ndarray:
  out = jax.jit(UNet(model_config).apply)({'params': params}, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t),
                                          None if labels is None else jnp.asarray(labels))
  return np.asarray(out).transpose(0, 3, 1, 2)


def batch(size: int, num_classes: int, seed: int = 0):
  """Returns (x, t, labels or None): labels cover the first and last class (and the null one: a separate row)."""
  x = np.random.RandomState(seed).randn(3, 3, size, size).astype(np.float32)
  return x, np.array([1, 500, 999]), np.array([0, num_classes - 1, num_classes]) if num_classes else None


def export_forward(config, params, out_dir: str, x, t, labels) -> np.ndarray:
  """Returns diffusers' forward of our export of params, loaded with from_pretrained."""
  exported = UNet2DModel.from_pretrained(os.path.join(diffusers_io.to_diffusers(config, params, out_dir), 'unet'))
  return diffusers_forward(exported.eval(), x, t, labels)


# Each option alone (the class embedding with AdaGN, which it feeds); all of them together: the CD ImageNet-64 test.
@pytest.mark.parametrize('changes', [
    dict(SCALE_SHIFT, num_class_embeds=5), RESNET_UPDOWN, dict(ATTEND_BOTH, attention_head_dim=4), ADM_TIME,
], ids=['scale_shift_classes', 'resnet_updown', 'head_dim', 'adm_time'])
def test_each_adm_layout_forwards_as_diffusers_after_import_and_export(tmp_path, changes):
  model = sharp_attention(random_unet(TINY, **changes))
  config, params = diffusers_io.from_diffusers(save(model, tmp_path / 'unet'))
  classes = config.model.num_classes
  assert classes == (changes.get('num_class_embeds') or 0)  # a diffusers model learned no null class: K = embeds
  assert count_params(params) == sum(p.numel() for p in model.parameters()) + (4 * 8 if classes else 0)  # + null row
  x, t, labels = batch(16, classes)
  ours = our_forward(config.model, params, x, t, labels)
  real = slice(0, 2)  # the null class (row 3) is ours alone
  assert np.abs(ours[real] - diffusers_forward(model, x[real], t[real], None if labels is None else labels[real])
                ).max() < 1e-4
  assert np.abs(ours - export_forward(config, params, str(tmp_path / 'e'), x, t, labels)).max() < 1e-4  # null too
  again, _ = diffusers_io.from_diffusers(str(tmp_path / 'e'))
  assert again.model == config.model  # the export records its null class: K classes again, not K + 1


def test_an_export_records_its_null_class_and_a_foreign_model_gets_a_zero_one(tmp_path, caplog):
  model = random_unet(TINY, num_class_embeds=3)
  config, params = diffusers_io.from_diffusers(save(model, tmp_path / 'unet'))
  warnings = [r.getMessage() for r in caplog.records if 'null class' in r.getMessage()]
  assert len(warnings) == 1 and 'guidance' in warnings[0] and 'never learned' in warnings[0]
  table = np.asarray(params['class_embed']['embedding'])
  np.testing.assert_array_equal(table[:3], model.class_embedding.weight.detach().numpy())
  np.testing.assert_array_equal(table[3], 0.0)
  out = diffusers_io.to_diffusers(config, params, str(tmp_path / 'export'))
  with open(os.path.join(out, 'unet', 'config.json')) as f:
    exported = json.load(f)
  assert (exported['num_class_embeds'], exported[diffusers_layout.NULL_CLASS_KEY]) == (4, 3)
  with open(os.path.join(out, 'README.md')) as f:
    assert 'null class (id 3' in f.read()
  caplog.clear()
  assert diffusers_io.from_diffusers(out)[0].model.num_classes == 3
  assert not [r for r in caplog.records if 'null class' in r.getMessage()]


def test_the_class_conditional_cd_imagenet64_layout_imports():
  unet, size = diffusers_layout.unet_config_from_diffusers(CD_IMAGENET64)
  assert (size, unet.base_channels, unet.channel_mults, unet.num_res_blocks) == (64, 192, (1, 2, 3, 4), 3)
  assert (unet.attention_resolutions, unet.num_head_channels, unet.num_classes) == ((32, 16, 8), 64, 1000)
  assert (unet.scale_shift_norm, unet.resblock_updown, unet.time_embedding) == (True, True, 'adm')
  unet.validate(size)
  with torch.device('meta'):  # the full model's shapes, no memory
    reference = UNet2DModel.from_config(CD_IMAGENET64)
  ours = diffusers_io.abstract_params(unet, size)
  # Our class table has the null row the diffusers model lacks.
  assert count_params(ours) == sum(p.numel() for p in reference.parameters()) + 4 * 192
  assert diffusers_layout.unet_config_to_diffusers(unet, size)['num_class_embeds'] == 1001


def test_the_cd_imagenet64_layout_forwards_as_diffusers_after_import_and_export(tmp_path):
  # The full 296M-parameter model takes ~1 min to build, save and compile on 2 cores: the same config at a sixth of
  # the width (heads of 32 channels: 2, 3 and 4 of them, as 6, 9 and 12 there), one block per level and 32 px
  # (diffusers places attention by block type, so the layout is the same at any size), every layout flag and the
  # 1000 classes kept.
  small = {**CD_IMAGENET64, 'block_out_channels': [32, 64, 96, 128], 'attention_head_dim': 32, 'layers_per_block': 1,
           'sample_size': 32}
  torch.manual_seed(0)
  model = UNet2DModel.from_config(small)
  with torch.no_grad():
    for param in model.parameters():
      param.normal_(0.0, 0.05)
  model = sharp_attention(model.eval())
  config, params = diffusers_io.from_diffusers(save(model, tmp_path / 'unet'))
  assert config.model.num_head_channels == 32 and config.model.num_classes == 1000
  x, t, labels = batch(32, 1000)
  ours = our_forward(config.model, params, x, t, labels)
  real = slice(0, 2)
  assert np.abs(ours[real] - diffusers_forward(model, x[real], t[real], labels[real])).max() < 1e-4
  assert np.abs(ours - export_forward(config, params, str(tmp_path / 'e'), x, t, labels)).max() < 1e-4
