"""Landmark presets: ISBI 2015 cephalogram sizes, noise grid and ε, and their CPU and demo variants."""

from __future__ import annotations

import os

import ml_collections

from robust_med import config_base
from robust_med.presets import DEMO_SQUARE_QUERIES, apply_protocol, noise_base, parse_arg

# Landmark detection on ISBI 2015 cephalograms (Ma & Liang §3.2; Yao et al. 2020): input 200×160
# (H×W; each axis scaled on its own, the per-axis scales go into the mm conversion), intensities
# in [0, 1] (1 channel). The L2 noise grid, AMAT's Δε and SAT's budgets are stated in the units of
# the authors' input under the paper protocol: 3 × 200 × 160 in [-1, 1] (SarielMa/amat_conf
# landmark_detection/data_loader.py: Resize([200, 160]), Normalize([0.5], [0.5])).
CEPH = dict(patch_size=(200, 160), noise_levels=(0., 0.5, 1., 2., 3., 4., 5.), delta_eps=1.,
            sat_eps=(1., 2., 3., 5.))
# The paper protocol (sources in docs/fidelity.md; file names in SarielMa/amat_conf
# landmark_detection/).
PAPER = {
    'method.xi_mode': 'per_term',          # Ma & Liang: a vector ξ for a loss of K terms (their
                                           # train_AMAT_2zscore.py tests each term on its own)
    'method.xi_stat': 'mean+2std',         # robust_med's reading of the paper (the authors'
                                           # script hard-codes its thresholds)
    'method.delta_eps': 0.5,               # train_AMAT_2zscore.py: delta = noise / 10 and
    'method.max_margin': 5.0,              # margins clamped to noise, with --tag try_5: noise 5
    'attack.step_size_factor': 5.0,        # train_AMAT_2zscore.py: alpha = 5, max_iter = 20,
    'attack.random_start': True,           # step = alpha·margin/max_iter, a random start
    'attack.clip': (0.0, 1.0),             # PGD.py clamps to their input range [-1, 1]
    'units.budgets': 'paper',
    'units.paper_shape': (3, 200, 160),
    'units.paper_per_model_intensity': 2.0,  # [-1, 1] against our [0, 1]
}
# metric.py total_loss_dice: the Dice heatmap term weighs 0.5 (Yao et al.'s BCE loss: 2).
PAPER_DICE_HEATMAP_WEIGHT = 0.5
VARIANTS = ('', 'cpu', 'synthetic')


def ceph_config(method: str, arg: str = '', heatmap_loss: str = 'dice') -> ml_collections.ConfigDict:
  """`configs/ceph_<method>.py`: '' is the full-sized run (500 epochs, batch 8, 200×160), 'cpu' a
  CPU-sized run on the real data (96×80 inputs, a narrow depth-5 U-Net), 'synthetic' the offline demo."""
  arg, protocol = parse_arg(arg, VARIANTS, 'configs/ceph_amat.py:synthetic')
  method, noise_sigma = noise_base(method)
  c = config_base.task_config('landmarks')
  c.data.name = 'isbi2015'
  c.data.root = os.path.join(config_base.DEFAULT_DATA_HOME, 'isbi2015_ceph')
  c.data.modality = 'xray'  # lateral cephalograms
  c.data.patch_size = CEPH['patch_size']
  c.landmarks.heatmap_loss = heatmap_loss
  c.method.name = method
  c.method.delta_eps = CEPH['delta_eps']
  c.method.eps = CEPH['sat_eps'][0] if method == 'sat' else 0.0
  c.method.xi_stat = 'mean+2std'          # also robust_med's setting for this head
  c.eval.noise_levels = CEPH['noise_levels']
  c.eval.batch_size = 16
  c.model.base_width, c.model.depth = 32, 4  # 200 and 160 are divisible by 2³
  c.batch_size, c.num_epochs = 8, 500
  c.log_every_steps = 19
  c.checkpoint_every_steps = 190
  if arg == 'cpu':
    # 96×80 keeps a depth-5 U-Net (sides divisible by 2⁴): a landmark detector needs the large
    # receptive field (at depth 3 the heatmap loss did not move in 12 epochs on the real data).
    c.data.patch_size = (96, 80)
    c.landmarks.radius = 5.0                # ≈ 0.05 × 96, as at full size
    c.model.base_width, c.model.depth = 8, 5
    c.num_epochs = 40
    c.optimizer.learning_rate = 5e-3
    c.method.xi_warmup_epochs = 5
    c.attack.steps = 5
    c.eval.every_epochs = 5
  elif arg == 'synthetic':
    # Offline demo: four distinct patterns on textured 64×64 backgrounds; a few minutes on 2 cores.
    c.eval.square_queries = DEMO_SQUARE_QUERIES
    c.data.name = 'synthetic'
    c.data.root = ''
    c.data.patch_size = (64, 64)
    c.data.num_landmarks = 4
    c.data.num_train, c.data.num_val = 256, 32
    c.landmarks.radius = 6.0
    c.model.base_width, c.model.depth = 8, 3
    c.batch_size, c.num_epochs = 16, 8
    c.optimizer.learning_rate = 1e-2
    c.method.xi_warmup_epochs = 2
    c.attack.steps = 5
    c.method.delta_eps = 0.5
    c.method.eps = 1.0 if method == 'sat' else 0.0
    c.eval.noise_levels = (0., 0.5, 1., 2.)
    c.eval.steps = c.eval.apgd_steps = 20
    c.log_every_steps = 16
    c.checkpoint_every_steps = 64
  # Gaussian-noise base models (`configs/ceph_std_noise.py`): the grid above already spans the
  # radii certifiable at σ = 0.25 (5 in the paper's units is 0.71 in the CPU variant's, 1.44 at
  # full size).
  c.method.noise_sigma = noise_sigma
  paper = dict(PAPER)
  if heatmap_loss == 'dice':
    paper['landmarks.heatmap_weight'] = PAPER_DICE_HEATMAP_WEIGHT
  if arg == '' and method == 'amat':  # ξ from a trained STD model (as segmentation's)
    paper.update({'method.xi_source': 'checkpoint',
                  'method.xi_checkpoint': os.path.join('runs', 'ceph_std')})
  if arg == 'synthetic':
    # The synthetic images' budgets are the demo's own (no paper image to state them for).
    paper = {k: v for k, v in paper.items() if not k.startswith('units.') and k not in (
        'method.delta_eps', 'method.max_margin')}
  apply_protocol(c, protocol, paper)
  return c
