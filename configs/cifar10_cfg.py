"""Class-conditional CIFAR-10 with classifier-free guidance: configs/cifar10_ddpm.py's 35.7M-parameter U-Net and
training (800k steps at batch 128) with its 10 classes and label dropout 0.1, trained with the package's
v-prediction (issue 25's faster recipe, README "Which recipe to start from"; the paper config pins ε).

Training costs what cifar10_ddpm's does (the class embedding adds 11 x 512 parameters). Guided sampling sends the
doubled batch through the U-Net at every step where w != 1: the grids (DDPM, 1000 steps, w = 2) cost 2x an
unguided grid. Evaluations use the fast protocol's sampler (DPM-Solver++(2M), 20 steps) instead of the paper
config's 1000 DDPM steps, 50x fewer calls, since --mode=eval scores each of the 4 eval.guidance_scales
(about 7 unguided evaluations in all); these FIDs are not the paper protocol's.
"""
from configs import cifar10_ddpm
from configs import default


def get_config():
  config = cifar10_ddpm.get_config()
  config.diffusion.prediction = default.get_config().diffusion.prediction  # 'v'
  config.model.num_classes = 10  # CIFAR-10's; id 10 is the null class
  config.training.label_dropout = 0.1
  config.sampling.guidance_scale = 2.0  # grids and --mode=sample
  config.eval.sampling = default.get_config().eval.sampling  # the fast protocol's sampler
  config.eval.guidance_scales = (1.0, 1.5, 2.0, 3.0)  # --mode=eval's sweep
  config.eval.metrics = (*config.eval.metrics, 'isc', 'prc')
  return config
