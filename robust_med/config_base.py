"""Every config key robust_med knows, with its default, and the checks run before training.

Config files in `configs/` start from `base_config()` and change what they need, so a key that is
not here is a typo: `validate` rejects it (and `--config.x.y=...` overrides of unknown keys fail at
flag parsing, because the config is locked).
"""

from __future__ import annotations

import os

import ml_collections

from robust_med import ranges
from robust_med.errors import ConfigError

EVAL_ATTACKS = ('pgd', 'apgd', 'apgd_t', 'square', 'pgd_patch')
DATA_PIPELINES = ('memory', 'grain')
PROTOCOLS = ('robust_med', 'paper')
DEFAULT_DATA_HOME = os.environ.get('ROBUST_MED_DATA', os.path.expanduser('~/robust_med_data'))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = 'segmentation'
  # Which settings a run claims to follow: 'robust_med' (the library's defaults below; claims no
  # paper's setting) or 'paper' (set by the presets of configs named after a paper's experiment,
  # which apply that paper's settings: docs/fidelity.md). Recorded in every report.
  c.protocol = 'robust_med'

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'            # 'synthetic' | 'msd'
  c.data.train_split = 'train'         # the split robust_med.main trains on
  c.data.eval_split = 'val'            # the split it evaluates on (robust_med.evaluate: --split)
  c.data.root = ''                     # msd: folder with dataset.json, imagesTr/, labelsTr/ and
                                       # optionally splits.json (named lists of cases)
  c.data.task_folder = ''              # msd: the MSD folder name, for messages (e.g. Task05_Prostate)
  c.data.patch_size = (64, 64)
  c.data.slice_axis = 2                # msd: spatial axis the 2-D slices are taken along
  c.data.foreground_only = True        # msd: keep only slices with foreground
  c.data.modality = ''                 # mr | us | xray | ct: the physical perturbations that fit
                                       # (robust_med.physical.MODALITIES); '' = not stated
  c.data.val_fraction = 0.2            # msd: volume-level split when there is no splits.json
  c.data.tune_fraction = 0.0           # > 0: a 'tune' split carved from train_split (msd: this
                                       # fraction of its volumes by the hash rule), for choosing
                                       # hyper-parameters without touching val or test
  c.data.max_volumes = 0               # msd: first k volumes of each split (0 = all), for CPU runs
  c.data.resize = False                # msd: resize slices to patch_size instead of pad/crop
  c.data.num_train = 256               # synthetic
  c.data.num_val = 64                  # synthetic
  c.data.num_classes = 3               # synthetic (background included)
  c.data.channels = 1                  # synthetic
  c.data.seed = 0                      # synthetic
  # How training batches are read; both give identical batches for the same seed.
  c.data.pipeline = 'memory'           # 'memory': the split's arrays in memory (small sets) |
                                       # 'grain': TFDS array_record files read through grain
                                       # (data larger than memory; robust_med.data.pipeline)
  c.data.records_dir = ''              # grain: folder the records were prepared into by
                                       # python -m robust_med.data.records --records_dir=DIR
  c.data.worker_count = 0              # grain: worker processes decoding batches (0 = none)
  # Volumes (segmentation: docs/volumes.md).
  c.data.ndim = 2                      # 2: slices along data.slice_axis | 3: whole volumes
  c.data.spacing = ()                  # volumes: mm per voxel to resample to (() = as stored,
                                       # then common to the split)
  c.data.volume_shape = ()             # volumes: the common padded grid (() = the smallest that
                                       # holds every volume of the split)
  c.data.foreground_fraction = 0.33    # volumes: share of each batch's patches centred on
                                       # foreground (nnU-Net's oversample_foreground_percent)

  c.model = ml_collections.ConfigDict()
  c.model.base_width = 16
  c.model.depth = 4
  c.model.max_width = 320
  c.model.compute_dtype = 'float32'    # or 'bfloat16' (GPU/TPU): the network computes in bf16,
                                       # parameters, losses and attacks stay float32
                                       # (robust_med/precision.py)
  c.model.ndim = 0                     # the U-Net's dims: 0 = the data's; 2 with data.ndim = 3
                                       # applies a 2-D model slice by slice (along
                                       # data.slice_axis) to whole volumes
  c.model.deep_supervision = 0         # U-Nets (segmentation): nnU-Net's extra outputs on this
                                       # many coarser decoder levels, in training; 0 = off
  c.model.sliding_overlap = 0.5        # volumes: the share of a window its neighbours overlap
  c.model.windows_per_batch = 4        # volumes: windows run together in the sliding window

  c.method = ml_collections.ConfigDict()
  c.method.name = 'amat'               # std | sat | amat | fgsm_aug | inverse_fgsm_aug |
                                       # fgsm_both_aug | rtda | vaft | smoothadv
  c.method.eps = 0.0                   # sat, rtda and the FGSM augmentations: the fixed budget ε
                                       # (rtda: 0 = no adversarial term)
  c.method.augment = False             # any method: train on batches augmented by the head's
                                       # Task.augment with the `augment` section's strengths
  c.method.noise_sigma = 0.0           # any method: Gaussian noise of this std (model input
                                       # units) added to every training input before the method
                                       # sees it, the training randomized smoothing wants
                                       # (robust_med.certify with --sigma = this); 0 = off
  c.method.noise_samples = 1           # smoothadv: Gaussian draws per sample (m), shared by its
                                       # attack and its loss
  c.method.grad_penalty = 0.0          # rtda: λ of the input-gradient penalty ‖∇ₓL‖₂²
  c.method.consistency_views = 0.0     # rtda: λ of the symmetric KL between two augmented views
  c.method.consistency_adv = 0.0       # rtda: λ of the symmetric KL between clean and adversarial
  c.method.fgsm_norm = 'linf'          # FGSM augmentations: norm of the one-step noise
  c.method.fgsm_source = 'online'      # FGSM augmentations: 'online' (regenerated from the model
                                       # being trained at every step) | 'offline' (generated once
                                       # from the trained model in fgsm_checkpoint and added to
                                       # the training set, which then trains with STD's loss)
  c.method.fgsm_checkpoint = ''        # fgsm_source=offline: workdir of the trained model
  c.method.q_max = 20.0                # vaft: VAFA's budget, the largest quantization step of a
                                       # block-DCT coefficient in grey levels (the authors' 20)
  c.method.vafa_steps = 20             # vaft: VAFA's signed-gradient steps (the authors' 20)
  c.method.vafa_block = (32,)          # vaft: DCT block side(s) (the authors' VAFT command: 32³)
  c.method.vafa_grey_level = 0.0       # vaft: one grey level in input units; 0 = 1/255 of
                                       # attack.clip's range, else of each batch's 0.5-99.5th
                                       # percentile range
  c.method.frequency_consistency = 1.0  # vaft: λ of the frequency consistency (the authors' 1)
  c.method.delta_eps = 1.0             # amat: Δε, margin growth step and initial margin
  c.method.xi_stat = 'mean'            # amat: 'mean' | 'mean+2std' of the clean training losses
  c.method.xi_mode = 'per_term'        # amat: what must pass ξ: 'per_term' (every loss term its
                                       # own ξ_k) | 'sum' (the summed loss one ξ) | 'score' (the
                                       # head's per-sample score, e.g. segmentation's Dice, above
                                       # the mean training score; refine='paper' only)
  c.method.xi_source = 'warmup'        # amat: 'warmup' (STD epochs first) | 'checkpoint'
  c.method.xi_warmup_epochs = 1        # amat, xi_source=warmup: STD epochs before ξ is measured
  c.method.xi_checkpoint = ''          # amat, xi_source=checkpoint: workdir of a trained STD run
  c.method.refine = 'paper'            # amat: 'paper' ((‖x̃−x‖+E)/2, the paper and the authors'
                                       # nnU-Net loop) | 'boundary' (min(E, distance of the first
                                       # PGD iterate past ξ): docs/methods.md)
  c.method.max_margin = 0.0            # amat: clamp margins to [0, max_margin]; 0 = no clamp
  c.method.adv_only_correct = False    # amat: no adversarial loss (and margin kept) for samples
                                       # whose clean loss terms are not all below ξ

  # The attack used while training (PGD for sat and amat); its budget comes from the method.
  c.attack = ml_collections.ConfigDict()
  c.attack.norm = 'l2'
  c.attack.steps = 20
  c.attack.step_size_factor = 2.5      # step = factor · ε / steps
  c.attack.random_start = False
  c.attack.clip = ()                   # () = no clipping, else (lo, hi)
  c.attack.kind = 'pixel'              # or a physical perturbation (robust_med.physical.KINDS):
                                       # SAT, AMAT and AdvBias attack its parameters, budgets in
                                       # its unit, settings from config.physical.settings
  c.attack.unroll = 'auto'             # 'auto' (unrolled on CPU: faster convolutions, slower
                                       # compiles; a loop elsewhere) | 'unrolled' | 'loop'

  # Budgets in a paper's units (robust_med/units.py). With budgets='paper', method.eps,
  # method.delta_eps, method.max_margin, eval.noise_levels, eval.huge_eps and interpret.eps are
  # stated in the units of the paper's network input and converted once to this model's: the
  # same per-pixel size relative to the intensity range. Reports show both.
  c.units = ml_collections.ConfigDict()
  c.units.budgets = 'model'            # 'model' | 'paper'
  c.units.paper_shape = ()             # (C, H, W) of the paper's network input
  c.units.paper_per_model_intensity = 1.0  # paper intensity units per unit of this model's input
                                       # (e.g. 2.0: the paper's [-1, 1] for our [0, 1])

  # Training-time augmentation (config.method.augment): per-sample random strengths drawn up to
  # these maxima inside the jitted step; geometric ones move the head's targets too. 0 = off.
  c.augment = ml_collections.ConfigDict()
  c.augment.flip = 0.0                 # probability of a horizontal flip
  c.augment.vflip = 0.0                # probability of a vertical flip
  c.augment.rotation = 0.0             # max |angle|, degrees
  c.augment.scale = 0.0                # max relative zoom
  c.augment.translation = 0.0          # max shift, fraction of the side
  c.augment.elastic_alpha = 0.0        # elastic displacement amplitude, pixels
  c.augment.elastic_sigma = 4.0        # its smoothness, pixels
  c.augment.gamma = 0.0                # max |log γ|
  c.augment.contrast = 0.0             # max relative contrast change
  c.augment.brightness = 0.0           # max additive brightness change
  c.augment.noise = 0.0                # max Gaussian noise σ
  c.augment.blur = 0.0                 # max Gaussian blur σ, pixels
  c.augment.speckle = 0.0              # max multiplicative (ultrasound speckle) noise σ

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 1e-5
  c.optimizer.grad_clip_norm = 12.0    # nnU-Net's gradient clipping
  c.optimizer.warmup_steps = 0

  c.batch_size = 32
  c.num_epochs = 10
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  c.progress_bar = True
  # TensorBoard event files under <workdir>/tb/ (robust_med.tensorboard_log; docs/watching.md):
  # training's scalars, margin histograms and config, each report's curves and figures, a
  # sweep's HParams table. Process 0 writes; a resumed run appends without repeating a step.
  c.log = ml_collections.ConfigDict()
  c.log.tensorboard = True
  c.log.example_images = True          # the examples figure (clean and attacked) in TensorBoard
                                       # at each learning-curve evaluation (eval.every_epochs)
  # Compiled steps are cached here across runs (JAX's persistent compilation cache), so a second
  # run, a resume or an evaluation of the same model skips XLA compilation; '' = off. The
  # environment variable JAX_COMPILATION_CACHE_DIR, when set, takes precedence.
  c.compilation_cache_dir = os.path.join(os.path.expanduser('~'), '.cache', 'robust_med', 'jax')

  # Robustness evaluation: PGD at each noise level of the grid, in the norm it reports.
  c.eval = ml_collections.ConfigDict()
  c.eval.noise_levels = (0.0, 1.0, 2.0)
  c.eval.norm = 'l2'
  c.eval.steps = 100
  c.eval.step_size_factor = 2.5
  c.eval.random_start = False
  c.eval.batch_size = 64
  c.eval.max_samples = 0               # 0 = every sample of the split; else k spread over it
  c.eval.seed = 0
  c.eval.chunk_steps = 0               # 0: each attack is one jitted loop over all its steps
                                       # (default); k > 0: a host loop over jitted chunks of k
                                       # unrolled steps (for a model whose convolutions run
                                       # slowly inside loops on CPU: models/conv.py)
  c.eval.every_epochs = 0              # > 0: clean metrics on eval_split after every k epochs
                                       # ('val' records in metrics.jsonl: the learning curve)
  # Attacks run at every level; the report has each curve and their per-sample worst case.
  c.eval.attacks = ('pgd', 'apgd')     # 'pgd' (always; the primary curve), 'apgd', 'apgd_t',
                                       # 'square', 'pgd_patch'; AutoAttack's order:
                                       # pgd,apgd,apgd_t,square
  c.eval.patch_attack_size = ()       # 'pgd_patch': PGD on each non-overlapping tile of this
                                       # size alone, the budget split over the tiles (the cheap
                                       # variant of a whole-volume attack: robust_med/patchwise.py);
                                       # () = the model's training patch (sliding-window models)
  c.eval.apgd_steps = 100              # APGD iterations (Croce & Hein 2020; no step size to tune)
  c.eval.apgd_restarts = 1
  c.eval.apgd_targets = 9              # 'apgd_t' (heads with targets: classification): APGD-T
                                       # with the DLR loss against this many most likely wrong
                                       # classes (AutoAttack's 9; fewer when the head has fewer)
  c.eval.square_queries = 1000         # 'square' (L∞ or L2): forward passes of the gradient-free
  c.eval.square_p_init = 0.0           # random search (Andriushchenko et al. 2020) and its
                                       # initial window fraction; 0 = the paper's for the norm
                                       # (0.05 L∞, 0.1 L2; robust_med/square.py)
  c.eval.square_remaining_only = True  # Square attacks only the samples the attacks before it
                                       # left above the head's floor (AutoAttack's protocol)
  c.eval.frequency_levels = ()        # VAFA (Hanif et al. 2023) budgets q_max in grey levels,
                                       # e.g. (10, 20, 40): a curve of its own in the report
                                       # ('frequency'), beside the Lp curves and not in their
                                       # worst case (another unit); () = not run
  c.eval.frequency_block = 8           # VAFA: the side of its DCT blocks (cubes on volumes)
  c.eval.frequency_steps = 20          # VAFA: signed-gradient steps on the quantization steps
  c.eval.frequency_grey_level = 0.0    # VAFA: one grey level in input units; 0 = 1/255 of the
                                       # data range (attack.clip), else of the evaluated images'
                                       # 0.5–99.5th percentile range
  c.eval.transfer_from = ''            # workdir of a trained run of this head (e.g. a sweep's
                                       # STD): the primary PGD crafted on it and applied to the
                                       # evaluated model, as a curve and a masking check
  # Gradient-masking checks (Carlini et al. 2019), written into robustness.json.
  c.eval.masking_checks = True
  c.eval.weak_steps = 0                # PGD-<weak_steps> must not beat PGD-<steps>; 0 = steps // 5
  c.eval.huge_eps = 0.0                # budget that must drive the metric to its floor; 0 = auto
  c.eval.check_tolerance = 0.02        # allowed violation, fraction of |clean − floor|
  c.eval.floor_tolerance = 0.1         # how close to the floor, fraction of |clean − floor|

  # Distribution-shift evaluation (robust_med.shift): clean metrics under each corruption at each
  # severity, written to shift.json and shift.png next to robustness.json. () = none.
  c.shift = ml_collections.ConfigDict()
  c.shift.corruptions = ()             # names from robust_med.corruptions.CORRUPTIONS or
                                       # robust_med.physical.KINDS; 'all' = every generic one,
                                       # 'modality' = config.data.modality's physical ones
  c.shift.severities = (1, 2, 3, 4, 5)
  c.shift.seed = 0

  # Physical perturbations (robust_med.physical, robust_med.physical_report): each kind attacked
  # (PGD on its parameters) at its budgets, beside the best of random parameters of the same
  # budget, written to physical.json and physical.png next to robustness.json. () = none.
  from robust_med import physical  # Local import keeps this module light.
  c.physical = ml_collections.ConfigDict()
  c.physical.kinds = ()                # names from robust_med.physical.KINDS, or ('modality',):
                                       # every kind config.data.modality lists
  c.physical.budgets = ml_collections.ConfigDict(
      {k: v[1:] for k, v in physical.BUDGETS.items()})  # per kind, in its unit
  c.physical.steps = 50                # PGD steps on the parameters
  c.physical.restarts = 1              # > 1: each restart from random parameters
  c.physical.random_draws = 10         # the random baseline: worst of this many draws per sample
  c.physical.check_steps = 4           # the convergence check: × steps, with 3 restarts, at the
                                       # largest budget; 0 = no check
  c.physical.settings = ml_collections.ConfigDict(
      {k: ml_collections.ConfigDict(v) for k, v in physical.SETTINGS.items()})

  # Saliency and its alignment with annotation masks (robust_med.interpret; heads that define
  # Task.saliency_target and saliency_score, e.g. classification).
  c.interpret = ml_collections.ConfigDict()
  c.interpret.method = 'gradcam'       # robust_med.saliency.METHODS
  c.interpret.layer = ''               # gradcam(++): module path, e.g. stage3_block0; '' = the
                                       # last top-level module with a spatial output
  c.interpret.target = 'predicted'     # explain the 'predicted' class or the true 'label'
  c.interpret.top_k = (5.0, 10.0, 20.0)  # top-k % saliency regions for IoU and Dice
  c.interpret.mask_key = 'mask'        # the records' annotation masks (N, H, W)
  c.interpret.eps = 0.0                # saliency under PGD (config.eval's norm and steps) at this
                                       # budget; 0 = the middle nonzero level of eval.noise_levels
  c.interpret.attack = True            # False: no saliency under attack
  c.interpret.smoothgrad_samples = 25
  c.interpret.smoothgrad_sigma = 0.15  # noise σ, fraction of each image's value range
  c.interpret.ig_steps = 64            # integrated gradients: trapezoid intervals
  c.interpret.ig_baseline = 'mean'     # integrated gradients: 'mean' | 'blur' | 'zero' (see
                                       # robust_med.saliency: 'zero' is degenerate with group norm)
  c.interpret.bootstrap_resamples = 10000
  c.interpret.confidence = 0.95        # bootstrap confidence level of the effect sizes
  c.interpret.figure_images = 6        # rows of interpret.png (a random choice by seed) ...
  c.interpret.figure_ids = ()          # ... or these record ids
  c.interpret.max_samples = 0          # 0 = every annotated image of the split
  c.interpret.batch_size = 32
  c.interpret.seed = 0

  c.mesh = ml_collections.ConfigDict()
  c.mesh.num_devices = 0               # 0 = all local devices
  # CPU only: run the host as this many devices (0 = one per available core, lowered to a
  # divisor of batch_size). XLA:CPU runs one device's convolutions on about one core, so data
  # parallelism over one device per core is what uses them all (benchmarks/attack_throughput.py:
  # 1.9× on 2 cores). Results differ from one device's in the last bits; a run may resume on
  # another count. Ignored when XLA_FLAGS sets --xla_force_host_platform_device_count or on
  # GPU/TPU; 1 = one CPU device.
  c.mesh.host_devices = 0
  return c


Range = ranges.Range
AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(0), Range(1), Range(0, open_lo=True)
UNIT, FRACTION = Range(0, 1), Range(0, 1, open_hi=True)
# The range of every numeric key of `base_config`, stated once and checked by `validate` at
# start-up for every entry point (main, evaluate, sweep, shift, interpret) before any value
# reaches numpy, JAX or matplotlib. A head states its own keys' in `Task.config_ranges`.
RANGES: dict[str, Range] = {
    'seed': AT_LEAST_0,
    'data.slice_axis': Range(0, 2), 'data.val_fraction': FRACTION, 'data.tune_fraction': FRACTION,
    'data.max_volumes': Range(0, note='0 = every volume'),
    'data.num_train': AT_LEAST_1, 'data.num_val': AT_LEAST_1, 'data.num_classes': Range(2),
    'data.channels': AT_LEAST_1, 'data.seed': AT_LEAST_0,
    'data.worker_count': Range(0, note='0 = decode in the training process'),
    'data.patch_size': AT_LEAST_1,
    'data.ndim': Range(2, 3), 'data.spacing': Range(0, open_lo=True),
    'data.volume_shape': AT_LEAST_1, 'data.foreground_fraction': UNIT,
    'model.ndim': Range(0, 3, note='0 = the data\'s'),
    'model.deep_supervision': AT_LEAST_0, 'model.sliding_overlap': Range(0, 1, open_hi=True),
    'model.windows_per_batch': AT_LEAST_1,
    'model.base_width': AT_LEAST_1, 'model.depth': AT_LEAST_1, 'model.max_width': AT_LEAST_1,
    'method.eps': AT_LEAST_0, 'method.delta_eps': AT_LEAST_0, 'method.q_max': AT_LEAST_0,
    'method.noise_sigma': AT_LEAST_0, 'method.noise_samples': AT_LEAST_1,
    'method.vafa_steps': AT_LEAST_1, 'method.vafa_grey_level': AT_LEAST_0,
    'method.vafa_block': AT_LEAST_1,
    'method.frequency_consistency': AT_LEAST_0,
    'method.grad_penalty': AT_LEAST_0, 'method.consistency_views': AT_LEAST_0,
    'method.consistency_adv': AT_LEAST_0, 'method.xi_warmup_epochs': AT_LEAST_0,
    'method.max_margin': Range(0, note='0 = no clamp'),
    'attack.steps': AT_LEAST_1, 'attack.step_size_factor': POSITIVE, 'attack.clip': Range(),
    'units.paper_per_model_intensity': POSITIVE, 'units.paper_shape': AT_LEAST_1,
    **{f'augment.{k}': AT_LEAST_0 for k in (
        'rotation', 'scale', 'translation', 'elastic_alpha', 'gamma', 'contrast', 'brightness',
        'noise', 'blur', 'speckle')},
    'augment.flip': UNIT, 'augment.vflip': UNIT, 'augment.elastic_sigma': POSITIVE,
    'optimizer.learning_rate': POSITIVE, 'optimizer.weight_decay': AT_LEAST_0,
    'optimizer.grad_clip_norm': Range(0, note='0 = no clipping'),
    'optimizer.warmup_steps': AT_LEAST_0,
    'batch_size': AT_LEAST_1, 'num_epochs': AT_LEAST_1, 'log_every_steps': AT_LEAST_1,
    'checkpoint_every_steps': AT_LEAST_1, 'keep_checkpoints': AT_LEAST_1,
    'eval.noise_levels': AT_LEAST_0, 'eval.steps': AT_LEAST_1,
    'eval.step_size_factor': POSITIVE, 'eval.batch_size': AT_LEAST_1,
    'eval.max_samples': Range(0, note='0 = every sample of the split'),
    'eval.seed': AT_LEAST_0,
    'eval.chunk_steps': Range(0, note='0 = one compiled loop per attack'),
    'eval.every_epochs': Range(0, note='0 = no learning curve'),
    'eval.apgd_steps': AT_LEAST_1, 'eval.apgd_restarts': AT_LEAST_1,
    'eval.apgd_targets': AT_LEAST_1, 'eval.square_queries': AT_LEAST_1,
    'eval.frequency_levels': AT_LEAST_0, 'eval.frequency_block': AT_LEAST_1,
    'eval.frequency_steps': AT_LEAST_1,
    'eval.frequency_grey_level': Range(0, note='0 = 1/255 of the data range'),
    'eval.square_p_init': Range(0, 1, note="0 = the paper's for the norm"),
    'eval.weak_steps': Range(0, note='0 = steps // 5'),
    'eval.huge_eps': Range(0, note='0 = automatic'),
    'eval.check_tolerance': AT_LEAST_0, 'eval.floor_tolerance': AT_LEAST_0,
    'shift.severities': Range(1, 5), 'shift.seed': AT_LEAST_0,
    'physical.steps': AT_LEAST_1, 'physical.restarts': AT_LEAST_1,
    'physical.random_draws': AT_LEAST_1,
    'physical.check_steps': Range(0, note='0 = no convergence check'),
    **{f'physical.budgets.{kind}': AT_LEAST_0
       for kind in ('bias_field', 'motion', 'spike', 'gibbs', 'rician', 'speckle', 'gain', 'dose',
                    'scatter', 'gamma')},
    'physical.settings.bias_field.order': AT_LEAST_0,
    'physical.settings.bias_field.points': Range(4, note='control points per side'),
    'physical.settings.motion.fraction': Range(0, 0.5, open_lo=True, open_hi=True),
    'physical.settings.motion.spacing_mm': POSITIVE,
    'physical.settings.spike.max_frequency': Range(0, 0.5, open_lo=True),
    'physical.settings.speckle.correlation': AT_LEAST_0,
    'physical.settings.gain.knots': Range(2), 'physical.settings.dose.quantum': POSITIVE,
    'physical.settings.scatter.order': AT_LEAST_0,
    'interpret.top_k': Range(0, 100, open_lo=True), 'interpret.eps': AT_LEAST_0,
    'interpret.smoothgrad_samples': AT_LEAST_1, 'interpret.smoothgrad_sigma': AT_LEAST_0,
    'interpret.ig_steps': AT_LEAST_1, 'interpret.bootstrap_resamples': AT_LEAST_1,
    'interpret.confidence': Range(0, 1, open_lo=True, open_hi=True),
    'interpret.figure_images': Range(0, note='0 = no figure'),
    'interpret.figure_ids': AT_LEAST_0,
    'interpret.max_samples': Range(0, note='0 = every annotated image'),
    'interpret.batch_size': AT_LEAST_1, 'interpret.seed': AT_LEAST_0,
    'mesh.num_devices': Range(0, note='0 = all local devices'),
    'mesh.host_devices': Range(0, note='0 = one per core'),
}


def choices() -> dict[str, tuple]:
  """The names each choice key accepts, stated once (the lists live with the code that uses them)
  and checked by `validate` at start-up like `RANGES`; a tuple value (eval.attacks) is checked
  element by element."""
  from robust_med import attacks, methods, physical, precision, saliency, units  # light module
  return {
      'protocol': PROTOCOLS, 'data.pipeline': DATA_PIPELINES,
      'model.compute_dtype': precision.COMPUTE_DTYPES, 'units.budgets': units.BUDGETS,
      'method.name': methods.METHODS, 'method.fgsm_source': ('online', 'offline'),
      'method.fgsm_norm': attacks.NORMS, 'method.xi_stat': methods.XI_STATS,
      'method.xi_mode': methods.XI_MODES, 'method.xi_source': ('warmup', 'checkpoint'),
      'method.refine': methods.REFINE_RULES, 'attack.norm': attacks.NORMS,
      'attack.kind': ('pixel',) + physical.KINDS,
      'attack.unroll': tuple(attacks.UNROLL_CHOICES), 'eval.norm': attacks.NORMS,
      'eval.attacks': EVAL_ATTACKS, 'interpret.method': saliency.METHODS,
      'interpret.target': ('predicted', 'label'), 'interpret.ig_baseline': saliency.IG_BASELINES,
  }


def task_config(task: str) -> ml_collections.ConfigDict:
  """`base_config()` for the head `task`, with the head's own keys (`Task.default_config`) added."""
  from robust_med.tasks import get_task_class  # Local import keeps this module light.
  c = base_config()
  c.task = task
  for section, values in get_task_class(task).default_config().items():
    if section not in c:
      c[section] = ml_collections.ConfigDict()
    for key, value in values.items():
      c[section][key] = value
  return c


def flat_keys(c, prefix='') -> dict:
  """{'a.b.c': value} for every leaf of a ConfigDict."""
  out = {}
  for k, v in c.items():
    path = f'{prefix}{k}'
    if isinstance(v, ml_collections.ConfigDict):
      out.update(flat_keys(v, path + '.'))
    else:
      out[path] = v
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` (one line: problem and fix) for unknown keys and impossible values."""
  from robust_med import methods  # Local import keeps this module light.
  from robust_med.tasks import get_task_class
  task = get_task_class(config.task)
  known = flat_keys(task_config(config.task))
  given = flat_keys(config)
  unknown = sorted(set(given) - set(known))
  if unknown:
    raise ConfigError(f'Unknown config key(s) {", ".join(unknown)}: check the spelling; the known '
                      f'keys and their defaults are in robust_med/config_base.py and the '
                      f'default_config() of the {config.task!r} head.')

  ranges.check(given, {**RANGES, **choices(), **task.config_ranges()})

  def need(ok: bool, message: str) -> None:
    if not ok:
      raise ConfigError(message)

  for key in ('data.train_split', 'data.eval_split'):
    need(isinstance(given[key], str) and bool(given[key]),
         f'config.{key} = {given[key]!r}: name a split of the data, e.g. train, val or test.')
  from robust_med import units  # Local import keeps this module light.
  units.check(config)
  if config.method.fgsm_source == 'offline':
    need(config.method.name in methods.AUGMENTATION_ATTACKS,
         f"config.method.fgsm_source = 'offline' applies to the FGSM augmentations, not "
         f'{config.method.name!r}: set it to online or pick fgsm_aug, inverse_fgsm_aug or '
         'fgsm_both_aug.')
    need(bool(config.method.fgsm_checkpoint), "config.method.fgsm_source is 'offline' but "
         'config.method.fgsm_checkpoint is empty: set it to the workdir of the trained model '
         'the adversarial copies are made from.')
    need(config.data.pipeline == 'memory', "config.method.fgsm_source = 'offline' adds the "
         "copies to the training arrays in memory: set config.data.pipeline='memory'.")
  need(config.data.train_split != config.data.eval_split,
       f'config.data.train_split and config.data.eval_split are both {config.data.eval_split!r}: '
       'evaluating on the training data overstates the model; evaluate on another split.')
  if config.data.pipeline == 'grain':
    need(isinstance(config.data.records_dir, str) and bool(config.data.records_dir),
         "config.data.pipeline is 'grain' but config.data.records_dir is empty: set it to the "
         'folder python -m robust_med.data.records --records_dir=DIR wrote.')
  if config.method.name == 'amat':
    need(config.method.delta_eps > 0, 'config.method.delta_eps must be > 0 for amat: set it to the '
         'margin growth step Δε (e.g. 10 for MSD Prostate).')
    if config.method.xi_mode == 'score':
      need(bool(getattr(task, 'xi_score_name', '')), f"config.method.xi_mode = 'score' but the "
           f'{config.task!r} head defines no per-sample score for ξ (Task.xi_score): use '
           "xi_mode='sum' or 'per_term'.")
      need(config.method.refine == 'paper', "config.method.xi_mode = 'score' works with "
           "refine='paper' only: set --config.method.refine=paper or another xi_mode.")
    if config.method.xi_source == 'checkpoint':
      need(bool(config.method.xi_checkpoint), 'config.method.xi_source is checkpoint but '
           'config.method.xi_checkpoint is empty: set it to the workdir of a trained STD run.')
    else:
      need(config.method.xi_warmup_epochs >= 1, 'config.method.xi_warmup_epochs must be ≥ 1 '
           'with xi_source=warmup: ξ needs a model trained on clean data.')
  from robust_med import alignment, saliency
  i = config.interpret
  alignment.check_top_k(i.top_k)
  saliency.check_settings(saliency.SaliencySettings.from_config(i))
  if config.method.name == 'rtda':
    m = config.method
    need(m.eps > 0 or m.grad_penalty > 0 or m.consistency_views > 0,
         'config.method.name = rtda with eps, grad_penalty and consistency_views all 0 is STD: '
         'set at least one (or use --config.method.name=std).')
    need(not m.consistency_adv or m.eps > 0, f'config.method.consistency_adv = '
         f'{m.consistency_adv} needs adversarial examples: set config.method.eps > 0.')
    need(not m.consistency_views or m.augment, f'config.method.consistency_views = '
         f'{m.consistency_views} compares two augmented views: set config.method.augment=True.')
  elif any(config.method[k] for k in ('grad_penalty', 'consistency_views', 'consistency_adv')):
    raise ConfigError(f'config.method.grad_penalty / consistency_views / consistency_adv are '
                      f'rtda settings but the method is {config.method.name!r}: set them to 0 or '
                      'use --config.method.name=rtda.')
  from robust_med import augment as augment_lib  # Local import keeps this module light.
  if config.method.augment:
    need(not augment_lib.AugmentSettings.from_config(config.augment).is_identity(),
         'config.method.augment is on but every config.augment strength is 0: set some (e.g. '
         '--config.augment.flip=0.5 --config.augment.rotation=10) or turn augment off.')
  from robust_med import corruptions  # Local import keeps this module light.
  for name in corruption_names(config):
    for severity in config.shift.severities:
      corruptions.check(name, severity)
  from robust_med import physical  # Local import keeps this module light.
  modality = config.data.get('modality', '')
  kind = config.attack.get('kind', 'pixel')
  if kind != 'pixel':
    physical.check(kind, modality or None)
    physical.check(kind, budgets=(config.method.eps, config.method.delta_eps,
                                  config.method.max_margin))
    physical.make(kind, **physical_settings(config, kind))
  need(not modality or modality in physical.MODALITIES,
       f'config.data.modality = {modality!r} is unknown: use one of '
       f'{", ".join(physical.MODALITIES)}, or \'\' when none fits.')
  for kind in physical_kinds(config):
    physical.check(kind, modality or None)
    physical.check(kind, budgets=tuple(config.physical.budgets[kind]))
    physical.make(kind, **physical_settings(config, kind))
  if config.method.name == 'smoothadv':
    need(config.method.noise_sigma > 0, 'config.method.name = smoothadv needs the smoothing '
         'noise: set config.method.noise_sigma > 0 (e.g. --config.method.noise_sigma=0.25).')
    need(config.attack.norm == 'l2', f'smoothadv certifies L2 radii: its attack must be L2, not '
         f'config.attack.norm={config.attack.norm!r}; set --config.attack.norm=l2.')
  if config.method.name in ('sat', 'smoothadv', 'advbias', *methods.AUGMENTATION_ATTACKS):
    need(config.method.eps > 0, f'config.method.eps must be > 0 for {config.method.name}: set the '
         'fixed noise budget, e.g. --config.method.eps=10.')
  if 'square' in config.eval.attacks:
    need(config.eval.norm in ('linf', 'l2'), f"config.eval.attacks has 'square' but "
         f'config.eval.norm is {config.eval.norm!r}: Square is implemented for linf and l2 only; '
         'drop it or use one of those.')
  need(not config.model.deep_supervision or task.supports_deep_supervision,
       f'config.model.deep_supervision = {config.model.deep_supervision} but the '
       f'{config.task!r} head\'s model has no deep supervision (the segmentation U-Net has): '
       'set it to 0.')
  if config.method.name == 'vaft':
    block = tuple(config.method.vafa_block)
    need(len(block) >= 1 and all(isinstance(b, int) and b >= 1 for b in block),
         f'config.method.vafa_block = {block}: give one positive integer block side (e.g. (32,)) '
         'or one per spatial dim.')
  patch = tuple(config.eval.get('patch_attack_size', ()))
  need(all(isinstance(p, int) and p >= 1 for p in patch),
       f'config.eval.patch_attack_size = {patch}: give positive integer tile sizes, one per '
       "spatial dim (e.g. (32, 48, 32)), or () for the model's training patch.")
  if 'apgd_t' in config.eval.attacks:
    need(task.has_attack_targets and 'dlr' in task.attack_objectives,
         f"config.eval.attacks has 'apgd_t' but the {config.task!r} head defines no target "
         "classes and DLR loss (APGD-T is for classification): drop 'apgd_t'.")
  need('pgd' in config.eval.attacks,
       f'config.eval.attacks = {tuple(config.eval.attacks)}: include \'pgd\' (the primary curve '
       'every report carries).')
  if config.eval.masking_checks and config.eval.weak_steps:
    need(config.eval.weak_steps < config.eval.steps,
         f'config.eval.weak_steps = {config.eval.weak_steps} must be below config.eval.steps = '
         f'{config.eval.steps}: the check compares a short PGD against the long one.')
  need(len(config.data.patch_size) in (2, 3)
       and min(config.data.patch_size) >= 2 ** (config.model.depth - 1),
       f'config.data.patch_size = {tuple(config.data.patch_size)} is too small for a U-Net of depth '
       f'{config.model.depth}: each side needs at least {2 ** (config.model.depth - 1)} pixels.')
  need(all(s % 2 ** (config.model.depth - 1) == 0 for s in config.data.patch_size),
       f'config.data.patch_size = {tuple(config.data.patch_size)} must be divisible by '
       f'2^(depth-1) = {2 ** (config.model.depth - 1)} for the U-Net to restore its size.')
  task.check_config(config)


def physical_kinds(config) -> tuple[str, ...]:
  """The physical perturbations `config.physical.kinds` names (('modality',) = every kind the
  dataset's `config.data.modality` lists)."""
  from robust_med import physical  # Local import keeps this module light.
  kinds = tuple(config.get('physical', {}).get('kinds', ()) or ())
  if kinds != ('modality',):
    return kinds
  modality = config.data.get('modality', '')
  if not modality:
    raise ConfigError("config.physical.kinds = ('modality',) but config.data.modality is not "
                      f'set: set it ({", ".join(physical.MODALITIES)}) or name the kinds.')
  return physical.MODALITIES[modality] if modality in physical.MODALITIES else ()


def physical_settings(config, kind: str) -> dict:
  """The settings of physical perturbation `kind` (config.physical.settings.<kind>)."""
  settings = config.physical.settings.get(kind)
  return dict(settings.to_dict()) if settings is not None else {}


def corruption_names(config) -> tuple[str, ...]:
  """The corruptions `config.shift.corruptions` names ('all' = every generic one of the suite,
  'modality' = the physical perturbations of config.data.modality), each once."""
  from robust_med import corruptions, physical  # Local import keeps this module light.
  names = tuple(config.get('shift', {}).get('corruptions', ()) or ())
  out = []
  for name in names:
    if name == 'all':
      out += corruptions.CORRUPTIONS
    elif name == 'modality':
      modality = config.data.get('modality', '')
      if modality not in physical.MODALITIES:
        raise ConfigError(f"config.shift.corruptions has 'modality' but config.data.modality is "
                          f'{modality!r}: set it ({", ".join(physical.MODALITIES)}) or name the '
                          'corruptions.')
      out += physical.MODALITIES[modality]
    else:
      out.append(name)
  return tuple(dict.fromkeys(out))
