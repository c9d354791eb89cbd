"""eval_bridge: generated JAX images → torch uint8 → metric plug-ins (FID/KID torch-fidelity, MS-SSIM torchmetrics).

Uses torch; the pure core never imports this package. Modules:
  convert    the uint8 quantisation shared with saved PNGs; JAX → torch (DLPack on GPU)
  fidelity   Inception extractor, start-up weight check, streamed features and logits, FID/KID/IS/PR
  artefacts  per-image brightness, colour, darkness and Laplacian statistics, and their gaps (numpy)
  ms_ssim    MS-SSIM over random pairs, with settings that fit 8 px and up
  reference  reference-split features and image statistics cached as .npz; the `Reference` set
  metrics    the plug-ins: `Metric` (update/result), the registry by name, one module per metric (fid, kid, ms_ssim,
             artefacts, isc, prc)
  evaluator  `Evaluator` (update/result): samples in, the chosen plug-ins' named scalars out
  testing    random Inception weights for offline tests and benchmarks
Import the submodules directly (`from eval_bridge import fidelity`): `convert`,
all that writing PNGs needs, and `metrics`, all that config checks and reports need, do not load torch.
"""
