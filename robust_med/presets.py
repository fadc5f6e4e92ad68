"""Per-dataset settings behind the config files in `configs/`.

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
from robust_med.errors import ConfigError

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
  if arg not in VARIANTS:
    raise ConfigError(f'Unknown config variant {arg!r}: use one of {VARIANTS} after the colon, '
                      'e.g. configs/prostate_amat.py:synthetic.')
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


# Landmark detection on ISBI 2015 cephalograms (Ma & Liang §3.2; Yao et al. 2020): input 200×160
# (H×W; each axis scaled on its own, the per-axis scales go into the mm conversion), intensities
# in [0, 1], L2 noise grid on those inputs, AMAT's Δε and the SAT budgets of the paper.
CEPH = dict(patch_size=(200, 160), noise_levels=(0., 0.5, 1., 2., 3., 4., 5.), delta_eps=1.,
            sat_eps=(1., 2., 3., 5.))
CEPH_VARIANTS = ('', 'cpu', 'synthetic')


def ceph_config(method: str, arg: str = '', heatmap_loss: str = 'dice') -> ml_collections.ConfigDict:
  """`configs/ceph_<method>.py`: '' is the paper-sized run (500 epochs, batch 8, 200×160), 'cpu' a
  CPU-sized run on the real data (96×80 inputs, a narrow depth-5 U-Net), 'synthetic' the offline demo."""
  if arg not in CEPH_VARIANTS:
    raise ConfigError(f'Unknown config variant {arg!r}: use one of {CEPH_VARIANTS} after the '
                      'colon, e.g. configs/ceph_amat.py:synthetic.')
  c = config_base.task_config('landmarks')
  c.data.name = 'isbi2015'
  c.data.root = os.path.join(config_base.DEFAULT_DATA_HOME, 'isbi2015_ceph')
  c.data.patch_size = CEPH['patch_size']
  c.landmarks.heatmap_loss = heatmap_loss
  c.method.name = method
  c.method.delta_eps = CEPH['delta_eps']
  c.method.eps = CEPH['sat_eps'][0] if method == 'sat' else 0.0
  c.method.xi_stat = 'mean+2std'          # Ma & Liang: ξ = mean + 2·std of the clean losses
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
  return c


# Object detection on BCCD blood cells (Ma & Liang §3.3; YOLOv5s, 320×320, 300 epochs, batch 32):
# ξ = mean + 2·std of each of the three loss terms, SAT at ε = 1, 5, 10, 15, AMAT Δε = 2.5, and
# an L2 noise grid on [0, 1] inputs (a 320×320×3 image has an L2 norm of about 400).
BCCD = dict(image_size=320, noise_levels=(0., 1., 2., 5., 10., 15.), delta_eps=2.5,
            sat_eps=(1., 5., 10., 15.))
BCCD_VARIANTS = ('', 'cpu', 'synthetic')


def bccd_config(method: str, arg: str = '') -> ml_collections.ConfigDict:
  """`configs/bccd_<method>.py`: '' is the paper-sized run (320×320, 300 epochs, batch 32, a
  YOLOv5s-wide detector), 'cpu' a CPU-sized run on the real data (see below), 'synthetic' the
  offline demo."""
  if arg not in BCCD_VARIANTS:
    raise ConfigError(f'Unknown config variant {arg!r}: use one of {BCCD_VARIANTS} after the '
                      'colon, e.g. configs/bccd_amat.py:synthetic.')
  c = config_base.task_config('detection')
  c.data.name = 'bccd'
  c.data.root = os.path.join(config_base.DEFAULT_DATA_HOME, 'bccd')
  c.data.image_size = BCCD['image_size']
  c.method.name = method
  c.method.delta_eps = BCCD['delta_eps']
  c.method.eps = BCCD['sat_eps'][1] if method == 'sat' else 0.0
  c.method.xi_stat = 'mean+2std'          # Ma & Liang: ξ = mean + 2·std of the clean losses
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
  return c


# Image classification (issue 11; the RTDA paper's setting on BUSI ultrasound and PneumoniaMNIST):
# inputs in [0, 1], L∞ threat model (train at ε = 4/255, evaluate on the grid below) with an L2
# grid for the same checkpoints (`CLASSIFICATION_L2_LEVELS`, through robust_med.evaluate).
# The eight methods: STD, the RTDA paper's six baselines and RTDA, plus AMAT (task-agnostic).
LINF_LEVELS = (0., 1 / 255, 2 / 255, 4 / 255, 8 / 255)
CLASSIFICATION_L2_LEVELS = (0., 0.25, 0.5, 1.0)
TRAIN_EPS = 4 / 255
GRAD_PENALTY = 0.1       # λ_gr of ‖∇ₓL‖₂²: λ = 1 collapsed RTDA to a constant model on the
                         # synthetic set (penalty ≈ 0.25 at init), 0.1 and 0.01 did not; chosen there,
                         # not on BUSI or pneumonia data
CONSISTENCY = 1.0        # λ of both symmetric-KL consistency terms
CLASSIFICATION_METHODS = {
    'std': dict(name='std'),
    'at': dict(name='sat', eps=TRAIN_EPS),
    'gradreg': dict(name='rtda', grad_penalty=GRAD_PENALTY),
    'aug': dict(name='std', augment=True),
    'at_aug': dict(name='sat', eps=TRAIN_EPS, augment=True),
    'at_gradreg': dict(name='rtda', eps=TRAIN_EPS, grad_penalty=GRAD_PENALTY),
    'rtda': dict(name='rtda', eps=TRAIN_EPS, grad_penalty=GRAD_PENALTY, augment=True,
                 consistency_views=CONSISTENCY, consistency_adv=CONSISTENCY),
    'amat': dict(name='amat', delta_eps=1 / 255, xi_stat='mean'),
}
CLASSIFICATION_VARIANTS = ('', 'cpu', 'synthetic')
# Augmentation strengths: ultrasound (flips allowed, speckle) and chest X-rays (no flips: the
# heart is on the left), scaled to the image sides used.
ULTRASOUND_AUGMENT = dict(flip=0.5, rotation=10., scale=0.1, translation=0.05, elastic_alpha=2.,
                          elastic_sigma=4., gamma=0.2, contrast=0.2, brightness=0.1, noise=0.02,
                          blur=0.6, speckle=0.15)
XRAY_AUGMENT = dict(rotation=10., scale=0.1, translation=0.05, elastic_alpha=1., elastic_sigma=3.,
                    gamma=0.2, contrast=0.2, brightness=0.1, noise=0.02, blur=0.5)
CLASSIFICATION = {
    'busi': dict(folder='busi', class_names=('normal', 'benign', 'malignant'), image_size=128,
                 cpu_image_size=64, cpu_epochs=30, cpu_batch_size=32, shift_image_key='images_28',
                 augment=ULTRASOUND_AUGMENT),
    'pneumonia': dict(folder='pneumoniamnist_variant', class_names=('normal', 'pneumonia'),
                      image_size=28, cpu_image_size=28, cpu_epochs=10, cpu_batch_size=64,
                      shift_image_key='',
                      augment=XRAY_AUGMENT),
}


def classification_config(dataset: str, method: str, arg: str = '') -> ml_collections.ConfigDict:
  """`configs/<dataset>_<method>.py` for BUSI and PneumoniaMNIST: '' is the paper-sized run
  (ResNet-18-like width, 100 epochs), 'cpu' a CPU-sized run on the real data, 'synthetic' the
  offline demo on built-in lesion images."""
  if arg not in CLASSIFICATION_VARIANTS:
    raise ConfigError(f'Unknown config variant {arg!r}: use one of {CLASSIFICATION_VARIANTS} '
                      f'after the colon, e.g. configs/{dataset}_rtda.py:synthetic.')
  d = CLASSIFICATION[dataset]
  c = config_base.task_config('classification')
  c.data.name = 'npz'
  c.data.root = os.path.join(config_base.DEFAULT_DATA_HOME, d['folder'])
  c.data.class_names = d['class_names']
  c.data.image_size = d['image_size']
  c.data.shift_image_key = d['shift_image_key']
  c.classification.class_weights = 'balanced'
  for k, v in CLASSIFICATION_METHODS[method].items():
    c.method[k] = v
  for k, v in d['augment'].items():
    c.augment[k] = v
  c.attack.norm = 'linf'
  c.attack.clip = (0., 1.)
  c.attack.steps = 10
  c.eval.norm = 'linf'
  c.eval.noise_levels = LINF_LEVELS
  c.eval.batch_size = 128
  c.shift.corruptions = ('all',)
  c.model.base_width, c.model.depth, c.model.stages = 32, 2, 4
  c.model.stem_stride = 2 if d['image_size'] >= 96 else 1
  c.batch_size, c.num_epochs = 32, 100
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 5e-4
  c.method.xi_warmup_epochs = 10
  c.log_every_steps = 17
  c.checkpoint_every_steps = 170
  if arg == 'cpu':
    c.data.image_size = d['cpu_image_size']
    c.model.base_width, c.model.depth = 16, 1
    c.model.stem_stride = 1
    c.num_epochs, c.batch_size = d['cpu_epochs'], d['cpu_batch_size']
    c.attack.steps = 5
    c.method.xi_warmup_epochs = 5
    c.eval.every_epochs = 5
    c.eval.steps = c.eval.apgd_steps = 20
  elif arg == 'synthetic':
    # Offline demo: three kinds of lesion on speckled 32×32 backgrounds; minutes on 2 cores.
    c.data.name = 'synthetic'
    c.data.root = ''
    c.data.class_names = ('normal', 'benign', 'malignant')
    c.data.shift_image_key = ''
    c.data.image_size = 32
    c.data.num_train, c.data.num_val = 384, 96
    c.model.base_width, c.model.depth, c.model.stages = 8, 1, 3
    c.model.stem_stride = 1
    c.augment.elastic_alpha = 1.
    c.batch_size, c.num_epochs = 32, 8
    c.optimizer.learning_rate = 3e-3
    c.method.xi_warmup_epochs = 2
    c.attack.steps = 3
    c.eval.steps = c.eval.apgd_steps = 10
    c.eval.noise_levels = (0., 2 / 255, 4 / 255, 8 / 255)
    c.shift.severities = (1, 3, 5)
    c.log_every_steps = 12
    c.checkpoint_every_steps = 48
  return c
