"""Segmentation presets: the MSD datasets' sizes, noise grids and ε, and their CPU and demo variants.

`configs/<dataset>_<method>.py` calls `msd_config(dataset, method, arg)`. The `arg` after the colon
picks a variant: '' (the full-sized run on the real MSD data: for Prostate and Heart the paper's
input and batch sizes), 'cpu' (a CPU-sized run on the real data), 'cpu_long' (the CPU-sized model
trained until STD's validation metric has plateaued, for convergence-length comparisons; see
experiments/README.md), 'synthetic' (the offline demo on built-in phantoms; no files needed).
Every variant follows the AMAT paper's protocol (`PAPER` below) unless ',robust_med' follows it.
"""

from __future__ import annotations

import os

import ml_collections

from robust_med import config_base, methods
from robust_med.presets import DEMO_SQUARE_QUERIES, apply_protocol, noise_base, parse_arg

# Each MSD dataset: task folder, channels, classes, robust_med's full-sized input (Prostate and
# Heart: the 2-D nnU-Net input the AMAT authors trained on, `paper_shape`, with its batch size;
# Hippocampus: slices padded to 48×64, the nnU-Net input not verified), the L2 noise grid, AMAT's
# Δε and SAT's ε, stated in the units of `paper_shape` (z-scored intensities, as nnU-Net's).
DATASETS = {
    'prostate': dict(folder='Task05_Prostate', channels=2, num_classes=3, patch_size=(320, 320),
                     batch_size=32, paper_shape=(2, 320, 320), resize=True,
                     noise_levels=(0., 10., 20., 30., 40.), delta_eps=10., sat_eps=20.,
                     cpu_patch_size=(128, 128)),
    'heart': dict(folder='Task02_Heart', channels=1, num_classes=2, patch_size=(320, 256),
                  batch_size=40, paper_shape=(1, 320, 256), resize=True,
                  noise_levels=(0., 5., 10., 15., 20., 25.), delta_eps=5., sat_eps=15.,
                  cpu_patch_size=(128, 128)),
    'hippocampus': dict(folder='Task04_Hippocampus', channels=1, num_classes=3,
                        patch_size=(48, 64), batch_size=32, paper_shape=(1, 48, 64), resize=False,
                        noise_levels=(0., 1., 3., 5., 7., 9., 11., 13., 15.), delta_eps=2.5,
                        sat_eps=5., cpu_noise_levels=(0., 1., 3., 5., 7., 10., 15.)),
}
# The L2 grid of the Gaussian-noise base models (`configs/<dataset>_std_noise.py`): the radii a
# smoothed model can be certified at with σ = 0.25 and n = 1000 copies (up to about 2.5σ), so that
# the attacked curve and the certified one share their axis (docs/certified.md).
SMOOTHING_LEVELS = (0., 0.125, 0.25, 0.5, 1.)


def paper_settings(dataset: str, method: str, variant: str) -> dict:
  """The AMAT paper's protocol for MSD segmentation (sources in docs/fidelity.md)."""
  d = DATASETS[dataset]
  paper = {
      'method.xi_mode': 'sum',              # Ma & Liang §3.1: one ξ = mean(V) of the whole loss
      'method.xi_stat': 'mean',
      'attack.step_size_factor': 4.0,       # SarielMa/amat_conf nnUNet network_trainer.py:
      'attack.random_start': True,          # step = 4·noise/max_iter, max_iter 20, random start
      'units.budgets': 'paper',             # budgets stated for the paper's input
      'units.paper_shape': d['paper_shape'],
      'units.paper_per_model_intensity': 1.0,  # z-scored like nnU-Net's
  }
  if variant == '':
    # Runs that need a trained STD model first find it at runs/<dataset>_std (the commands in
    # docs/segmentation.md train it there; robust_med.sweep passes its own).
    std = os.path.join('runs', f'{dataset}_std')
    if method == 'amat':                    # ξ from a trained STD model (§3.1)
      paper.update({'method.xi_source': 'checkpoint', 'method.xi_checkpoint': std})
    if method in methods.AUGMENTATION_ATTACKS:              # seed 001: the copies made once by a trained model
      paper.update({'method.fgsm_source': 'offline', 'method.fgsm_checkpoint': std})
  return paper


VARIANTS = ('', 'cpu', 'cpu_long', 'synthetic')
VOLUME_VARIANTS = ('', 'cpu', 'synthetic')
CPU_LONG_EPOCHS = 16  # see the cpu_long branch below


def msd_config(dataset: str, method: str, arg: str = '') -> ml_collections.ConfigDict:
  d = DATASETS[dataset]
  arg, protocol = parse_arg(arg, VARIANTS, 'configs/prostate_amat.py:synthetic')
  variant = arg
  method, noise_sigma = noise_base(method)
  c = config_base.task_config('segmentation')
  c.data.name = 'msd'
  c.data.task_folder = d['folder']
  c.data.root = os.path.join(config_base.DEFAULT_DATA_HOME, d['folder'])
  c.data.modality = 'mr'  # every MSD set here is MR (robust_med.physical.MODALITIES)
  c.data.patch_size = d['patch_size']
  c.data.resize = d['resize']
  c.data.slice_axis = 2
  c.method.name = method
  c.method.delta_eps = d['delta_eps']
  c.method.eps = d['sat_eps'] if method == 'sat' else 0.0
  c.eval.noise_levels = d['noise_levels']
  c.model.base_width, c.model.depth = 32, 5
  c.batch_size, c.num_epochs = d['batch_size'], 50

  if arg in ('cpu', 'cpu_long'):
    c.data.patch_size = d.get('cpu_patch_size', d['patch_size'])
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
    c.eval.square_queries = DEMO_SQUARE_QUERIES
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
  if method in methods.AUGMENTATION_ATTACKS:
    c.method.eps = 0.05 if arg == 'synthetic' else 0.1  # L∞ budget in z-score units.
  if noise_sigma:
    c.method.noise_sigma = noise_sigma
    c.eval.noise_levels = SMOOTHING_LEVELS if arg != 'synthetic' else (0., 0.25, 0.5)
  paper = paper_settings(dataset, method, variant)
  if arg == 'synthetic':
    # The phantoms' budgets above are the demo's own (no paper image to state them for).
    paper = {k: v for k, v in paper.items() if not k.startswith('units.')}
  apply_protocol(c, protocol, paper)
  return c


# Whole volumes (configs/<dataset>3d_<method>.py, the head's data.ndim = 3): the patch the U-Net
# is trained on and the sliding window predicts with, the target spacing, and the L2 noise grid
# per volume (the budget covers all the volume's voxels; the 2-D grids above are per slice).
# Sizes are robust_med's, nnU-Net-like (a 3-D U-Net on isotropic 1 mm patches); none is taken
# from nnU-Net's plans for the task, which were not run here.
VOLUME_DATASETS = {
    'hippocampus': dict(folder='Task04_Hippocampus', channels=1, num_classes=3,
                        spacing=(1.0, 1.0, 1.0), patch_size=(40, 56, 40), batch_size=8,
                        noise_levels=(0., 5., 10., 20., 40., 80.), delta_eps=5., sat_eps=20.,
                        cpu_patch_size=(32, 48, 32),
                        # One grid for every split (the largest of train and val at 1 mm is
                        # 43×59×47), so that records of all splits share their shapes.
                        volume_shape=(48, 64, 48)),
}


def volume_config(dataset: str, method: str, arg: str = '') -> ml_collections.ConfigDict:
  """The 3-D head's config for `dataset` and `method`; variants: '' (full-sized, real data),
  'cpu' (a CPU-sized run on the real data) and 'synthetic' (the offline demo on 3-D phantoms).
  The AMAT paper's method settings (ξ as the mean of the summed loss, PGD's step 4·ε/steps with a
  random start) apply to every variant unless ',robust_med' follows it; the paper itself
  trained on 2-D slices, so nothing else here is the paper's."""
  d = VOLUME_DATASETS[dataset]
  example = f'configs/{dataset}3d_amat.py:synthetic'
  variant, protocol = parse_arg(arg, VOLUME_VARIANTS, example)
  c = config_base.task_config('segmentation')
  c.data.ndim = 3
  c.data.name = 'msd'
  c.data.task_folder = d['folder']
  c.data.root = os.path.join(config_base.DEFAULT_DATA_HOME, d['folder'])
  c.data.spacing = d['spacing']
  c.data.volume_shape = d['volume_shape']
  c.data.patch_size = d['patch_size']
  c.method.name = method
  c.method.delta_eps = d['delta_eps']
  c.method.eps = d['sat_eps'] if method == 'sat' else 0.0
  c.eval.noise_levels = d['noise_levels']
  c.eval.batch_size = 4
  c.model.base_width, c.model.depth = 32, 4
  c.batch_size, c.num_epochs = d['batch_size'], 50
  if variant == 'cpu':
    c.data.patch_size = d['cpu_patch_size']
    c.model.base_width, c.model.depth = 8, 3
    c.batch_size, c.num_epochs = 8, 20
    c.optimizer.learning_rate = 2e-3
    c.method.xi_warmup_epochs = 4
    c.attack.steps = 5
    c.eval.steps = 20
    c.eval.max_samples = 16
  elif variant == 'synthetic':
    # Offline demo on 3-D phantoms (z-scored per volume like the MSD volumes), about 1.5 minutes
    # on 2 CPU cores (docs/volumes.md); the noise grid is the demo's own.
    c.eval.square_queries = DEMO_SQUARE_QUERIES
    c.data.name = 'synthetic'
    c.data.root = ''
    c.data.spacing = (2.0, 2.0, 2.0)  # The phantoms' anatomy in mm on a coarse, cheap grid.
    c.data.volume_shape = (16, 24, 16)
    c.data.patch_size = (16, 16, 16)
    c.data.channels = d['channels']
    # One foreground class (the organ): on this grid the phantoms' inner zone is about 5 voxels
    # of a volume, too few to learn in a demo (a 30-epoch STD never predicted it).
    c.data.num_classes = 2
    c.data.num_train, c.data.num_val = 64, 8
    c.model.base_width, c.model.depth = 8, 3
    c.batch_size, c.num_epochs = 8, 16
    c.optimizer.learning_rate = 1e-2
    c.method.xi_warmup_epochs = 4
    c.attack.steps = 5
    c.method.delta_eps = 1.0
    c.method.eps = 4.0 if method == 'sat' else 0.0
    c.eval.noise_levels = (0., 1., 2., 4., 8.)
    c.eval.steps = c.eval.apgd_steps = 10
    # Square's queries are whole-volume forward passes, 500 per level and batch: the demo runs
    # the gradient attacks (PGD, APGD) and the masking checks; add 'square' to run it.
    c.eval.attacks = ('pgd', 'apgd')
    c.log_every_steps = 8
    c.checkpoint_every_steps = 32
  if method in methods.AUGMENTATION_ATTACKS:
    c.method.eps = 0.05 if variant == 'synthetic' else 0.1  # L∞ budget in z-score units.
  if method == 'vaft' and variant:
    # The authors' VAFT command (q_max 20, 20 steps, 32³ blocks on 96³ patches) scaled to the
    # smaller patches: blocks of half the patch's smallest side, as many steps as the PGD.
    c.method.vafa_block = (min(c.data.patch_size) // 2,)
    c.method.vafa_steps = c.attack.steps
  paper = {k: v for k, v in paper_settings(dataset, method, variant).items()
           if not k.startswith('units.')}
  for key in ('method.xi_checkpoint', 'method.fgsm_checkpoint'):
    if key in paper:
      paper[key] = os.path.join('runs', f'{dataset}3d_std')
  apply_protocol(c, protocol, paper)
  return c
