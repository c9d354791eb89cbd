"""A small class-conditional U-Net (1.1M parameters) on the built-in shapes at 16x16: 1,500 steps in 2.4 minutes.

Its grids (samples/step_500.png, _1000, _1500) give each shape kind (circle, square, triangle) a block of
rows, sampled with classifier-free guidance w = 3. By step 1,500 most circles are round and most triangles
pointed, on the right backgrounds; squares are the weakest (about half look square) and a few samples are
empty; backgrounds are dark more often than in the data (guidance trades variety for clarity:
--config.sampling.guidance_scale=1 samples plainly conditional). The same network trained unconditionally
drew soft blobs, about a third of them recognisable, and more steps, a shifted (less noisy) schedule, EDM's
loss weighting or a bigger sampler did not help; conditioning on the shape kind (label dropout 0.1, which
guidance needs) did. `python -m benchmarks.quickstart` measured 2.4 minutes from start to exit at 13.4
steps/s on 2 lightly loaded Xeon cores (BENCHMARKS.md).

The recipe learned fastest in issue 25's measurements on digits: v-prediction weighted by Min-SNR-5, learning
rate 1e-3, EMA 0.999 (about 2x closer to the data than eps-MSE with lr 2e-3 at equal steps). On these shapes,
unweighted v, Min-SNR-2, Min-SNR-20 and EDM's weighting drew worse grids, lr 2e-3 no better (on photographs,
unweighted v learns faster: benchmarks/learning_efficiency.py, and is the package's default).
Batch 16: many small steps beat fewer large ones at equal wall time (images/s barely change with the batch).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'shapes'
  config.data.image_size = 16
  config.model.base_channels = 32
  config.model.channel_mults = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (4,)
  config.model.num_heads = 1
  config.model.dropout = 0.0
  config.model.num_groups = 8
  config.model.num_classes = 3  # circle, square, triangle: the shape kind of each image
  config.diffusion.schedule = 'cosine'
  config.diffusion.loss = 'mse'
  config.diffusion.prediction = 'v'
  config.diffusion.loss_weighting = 'min_snr'  # the weighting that made the difference: shapes appear ~2x sooner
  config.diffusion.min_snr_gamma = 5.0
  config.training.batch_size = 16  # small batches, many steps: the fastest route to shapes on a CPU
  config.training.num_steps = 1500
  config.training.learning_rate = 1e-3
  config.training.warmup_steps = 25
  config.training.label_dropout = 0.1  # a tenth of the examples train the null class that guidance contrasts with
  config.training.ema_decay = 0.999  # with ema_warmup the average spans ~step/9 steps (~170 at step 1,500), up to 1,000
  config.training.log_every_steps = 25
  config.training.checkpoint_every_steps = 500  # with keep_checkpoints=2 a finished run keeps 1,000 and 1,500
  config.training.sample_every_steps = 500
  config.training.keep_checkpoints = 2
  config.sampling.sampler = 'ddim'
  config.sampling.num_steps = 50
  config.sampling.eta = 1.0  # stochastic DDIM: cleaner shapes from a young model, where eta=0 leaves speckle
  config.sampling.guidance_scale = 3.0  # w = 3 drew the clearest shapes at step 1,500 (w = 1 and 2 softer)
  config.eval.guidance_scale = 3.0  # evaluations sample as the grids do
  config.eval.sampling.eta = 1.0  # evaluations sample as the grids do
  config.eval.every_steps = 0
  return config
