"""Detection presets: BCCD image size, noise grid and ε, and their CPU and demo variants."""

from __future__ import annotations

import os

import ml_collections

from robust_med import config_base
from robust_med.presets import DEMO_SQUARE_QUERIES, apply_protocol, noise_base, parse_arg

# Object detection on BCCD blood cells (Ma & Liang §3.3; YOLOv5s, 320×320, 300 epochs, batch 32):
# ξ = mean + 2·std of each of the three loss terms, SAT at ε = 1, 5, 10, 15, AMAT Δε = 2.5, and
# an L2 noise grid on [0, 1] inputs (a 320×320×3 image has an L2 norm of about 400).
BCCD = dict(image_size=320, noise_levels=(0., 1., 2., 5., 10., 15.), delta_eps=2.5,
            sat_eps=(1., 5., 10., 15.))
VARIANTS = ('', 'cpu', 'synthetic')
# The L2 grid of the Gaussian-noise base model (`configs/bccd_std_noise.py`), in the paper's units:
# radii certifiable at σ = 0.25 (0.6× these in the CPU variant's 192×192 input).
SMOOTHING_LEVELS = (0., 0.25, 0.5, 1., 2.)
# The paper protocol (sources in docs/fidelity.md; files in SarielMa/amat_conf yolov5/): a vector
# ξ over the three loss terms at mean + 2·std (robust_med's reading of the paper), the training
# attack of train_AMAT.py (alpha = 5, max_iter = 20: step 5·ε/20, a random start, clamped to
# [0, 1]), and the average IoU after NMS at IoU 0.5 (evaluate_adv_avIOU.py: conf_thres 0.001,
# iou_thres 0.5; mAP then uses 0.5 too, where YOLOv5's val.py uses 0.6). Budgets are stated for
# the authors' 3 × 320 × 320 input in [0, 1], which robust_med's full-sized run feeds as well.
PAPER = {
    'method.xi_mode': 'per_term',
    'method.xi_stat': 'mean+2std',
    'attack.step_size_factor': 5.0,
    'attack.random_start': True,
    'attack.clip': (0.0, 1.0),
    'detection.nms_iou': 0.5,
    'units.budgets': 'paper',
    'units.paper_shape': (3, 320, 320),
    'units.paper_per_model_intensity': 1.0,
}


def bccd_config(method: str, arg: str = '') -> ml_collections.ConfigDict:
  """`configs/bccd_<method>.py`: '' is the full-sized run (320×320, 300 epochs, batch 32, a
  YOLOv5s-wide detector), 'cpu' a CPU-sized run on the real data (see below), 'synthetic' the
  offline demo."""
  arg, protocol = parse_arg(arg, VARIANTS, 'configs/bccd_amat.py:synthetic')
  method, noise_sigma = noise_base(method)
  c = config_base.task_config('detection')
  c.data.name = 'bccd'
  c.data.root = os.path.join(config_base.DEFAULT_DATA_HOME, 'bccd')
  c.data.image_size = BCCD['image_size']
  c.method.name = method
  c.method.delta_eps = BCCD['delta_eps']
  c.method.eps = BCCD['sat_eps'][1] if method == 'sat' else 0.0
  c.method.xi_stat = 'mean+2std'          # also robust_med's setting for this head
  c.method.xi_warmup_epochs = 30
  c.eval.noise_levels = BCCD['noise_levels']
  c.eval.batch_size = 16
  c.model.base_width, c.model.depth = 32, 1  # YOLOv5s: 32 stem channels, one bottleneck per CSP
  c.batch_size, c.num_epochs = 32, 300
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 21
  c.log_every_steps = 7
  c.checkpoint_every_steps = 140
  if arg == 'cpu':
    # CPU-sized (about 16 ms per image forward and backward on 2 cores): 192×192 inputs (a BCCD
    # platelet is still 7–10 px, more than the finest stride), an 8-wide detector, 30 epochs, PGD-3
    # while training, and a 5-level grid evaluated on 16 validation images.
    c.data.image_size = 192
    c.model.base_width = 8
    c.batch_size, c.num_epochs = 16, 30
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 13
    c.log_every_steps = 13
    c.checkpoint_every_steps = 65
    c.method.xi_warmup_epochs = 10
    c.attack.steps = 3
    c.eval.every_epochs = 5
    c.eval.noise_levels = (0., 1., 2., 5., 10.)
    c.eval.max_samples = 16
  elif arg == 'synthetic':
    # Offline demo: three kinds of cells on textured 64×64 backgrounds; a few minutes on 2 cores.
    c.eval.square_queries = DEMO_SQUARE_QUERIES
    c.data.name = 'synthetic'
    c.data.root = ''
    c.data.image_size = 64
    c.data.max_boxes = 8
    c.data.class_names = ('rbc', 'wbc', 'platelet')
    c.data.num_train, c.data.num_val = 256, 32
    c.model.base_width = 8
    c.batch_size, c.num_epochs = 16, 10
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 0
    c.method.xi_warmup_epochs = 3
    c.attack.steps = 5
    c.method.delta_eps = 0.5
    c.method.eps = 1.0 if method == 'sat' else 0.0
    c.eval.noise_levels = (0., 0.5, 1., 2.)
    c.eval.steps = c.eval.apgd_steps = 10
    # Compiling the detector unrolled is slow on CPU (PGD-10: 48 s against 7 s as a loop); its
    # convolutions run as fast in a loop (models/conv.py), so the training attack loops too.
    c.attack.unroll = 'loop'
    c.log_every_steps = 16
    c.checkpoint_every_steps = 64
  if noise_sigma:
    c.method.noise_sigma = noise_sigma
    c.eval.noise_levels = SMOOTHING_LEVELS
  paper = dict(PAPER)
  if arg == '' and method == 'amat':  # ξ from a trained STD model
    paper.update({'method.xi_source': 'checkpoint',
                  'method.xi_checkpoint': os.path.join('runs', 'bccd_std')})
  if arg == 'synthetic':  # The demo's budgets are its own (no paper image to state them for).
    paper = {k: v for k, v in paper.items() if not k.startswith('units.')}
  apply_protocol(c, protocol, paper)
  return c
