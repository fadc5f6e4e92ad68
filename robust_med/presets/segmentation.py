"""Segmentation presets: the MSD datasets' sizes, noise grids and ε, and their CPU and demo variants.

`configs/<dataset>_<method>.py` calls `msd_config(dataset, method, arg)`. The `arg` after the colon
picks a variant: '' (the paper-sized run on the real MSD data), 'cpu' (a CPU-sized run on the real
data), 'cpu_long' (the CPU-sized model trained until STD's validation metric has plateaued, for
convergence-length comparisons; see experiments/README.md), 'synthetic' (the offline demo on
built-in phantoms; no files needed).
"""

from __future__ import annotations

import os

import ml_collections

from robust_med import config_base
from robust_med.presets import check_variant

# The AMAT paper's settings: MSD task folder, channels, noise grid (L2, z-scored inputs),
# AMAT's Δε and SAT's default ε (the paper also sweeps SAT over several ε; see experiments/).
DATASETS = {
    'prostate': dict(folder='Task05_Prostate', channels=2, num_classes=3, patch_size=(128, 128),
                     resize=True, noise_levels=(0., 10., 20., 30., 40.), delta_eps=10., sat_eps=20.),
    'heart': dict(folder='Task02_Heart', channels=1, num_classes=2, patch_size=(128, 128),
                  resize=True, noise_levels=(0., 5., 10., 15., 20., 25.), delta_eps=5., sat_eps=15.),
    'hippocampus': dict(folder='Task04_Hippocampus', channels=1, num_classes=3,
                        patch_size=(48, 64), resize=False,
                        noise_levels=(0., 1., 3., 5., 7., 9., 11., 13., 15.), delta_eps=2.5,
                        sat_eps=5., cpu_noise_levels=(0., 1., 3., 5., 7., 10., 15.)),
}
VARIANTS = ('', 'cpu', 'cpu_long', 'synthetic')
CPU_LONG_EPOCHS = 16  # see the cpu_long branch below


def msd_config(dataset: str, method: str, arg: str = '') -> ml_collections.ConfigDict:
  d = DATASETS[dataset]
  check_variant(arg, VARIANTS, 'configs/prostate_amat.py:synthetic')
  c = config_base.base_config()
  c.task = 'segmentation'
  c.data.name = 'msd'
  c.data.task_folder = d['folder']
  c.data.root = os.path.join(config_base.DEFAULT_DATA_HOME, d['folder'])
  c.data.patch_size = d['patch_size']
  c.data.resize = d['resize']
  c.data.slice_axis = 2
  c.method.name = method
  c.method.delta_eps = d['delta_eps']
  c.method.eps = d['sat_eps'] if method == 'sat' else 0.0
  c.eval.noise_levels = d['noise_levels']
  c.model.base_width, c.model.depth = 32, 5
  c.batch_size, c.num_epochs = 32, 50

  if arg in ('cpu', 'cpu_long'):
    c.model.base_width, c.model.depth = 8, 3
    c.batch_size, c.num_epochs = 32, 8
    c.optimizer.learning_rate = 2e-3
    c.method.xi_warmup_epochs = 2
    c.attack.steps = 10
    c.eval.max_samples = 256
  if arg == 'cpu_long':
    # STD's clean validation ADI on Hippocampus stops improving by about this length (the curve
    # is in experiments/README.md); PGD-5 while training and a 96-slice evaluation on a 7-level
    # grid keep a 5-model sweep within a few CPU hours.
    c.data.max_volumes = 80
    c.num_epochs = CPU_LONG_EPOCHS
    c.attack.steps = 5
    c.eval.every_epochs = 1
    c.eval.max_samples, c.eval.batch_size = 96, 96
    c.eval.noise_levels = d.get('cpu_noise_levels', d['noise_levels'])
  elif arg == 'synthetic':
    # Offline demo sized for ~3 minutes of training on 2 CPU cores. Phantom intensities are
    # z-scored per image like the MSD slices; the noise grid is scaled to the image size.
    c.data.name = 'synthetic'
    c.data.root = ''
    c.data.patch_size = (48, 48)
    c.data.channels = d['channels']
    c.data.num_classes = d['num_classes']
    c.data.num_train, c.data.num_val = 512, 64
    c.model.base_width, c.model.depth = 8, 3
    c.batch_size, c.num_epochs = 32, 12
    c.optimizer.learning_rate = 3e-3
    c.method.xi_warmup_epochs = 2
    c.attack.steps = 5
    c.method.delta_eps = 0.5
    c.method.eps = 2.0 if method == 'sat' else 0.0
    c.eval.noise_levels = (0., 0.5, 1., 2., 4.)
    c.log_every_steps = 16
    c.checkpoint_every_steps = 64
  if method in ('fgsm_aug', 'inverse_fgsm_aug', 'fgsm_both_aug'):
    c.method.eps = 0.05 if arg == 'synthetic' else 0.1  # L∞ budget in z-score units.
  return c
