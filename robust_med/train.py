"""Train state, the jitted data-parallel train step, and the training loop.

The state is one pytree (params, optimizer state, step, RNG, per-sample `margins` and the AMAT
thresholds `xi`). One jitted step runs over the device mesh: the batch and the margins are split
along the data axis, the rest is replicated, and the step gathers `margins[batch['id']]`, attacks
with them and scatters the updated margins back.

In a multi-process run (`sharding.initialize_distributed`, e.g. one process per host) the mesh spans
every process's devices: each process reads only its rows of each global batch (the same global
batches in the same order as one process would read), the margins are one global array split
across processes, every process writes its shards of each checkpoint (Orbax coordinates them), and
only process 0 writes metrics.jsonl and config.json. Every process runs the same loop, so every
process takes part in each collective (the steps, the margin gathers for logging, checkpoints).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from robust_med import checkpointing, compile_cache, config_base, methods, precision, sharding
from robust_med import margins as margins_lib
from robust_med import reports, tensorboard_log, units
from robust_med.data.source import check_training_size, evaluation_subset
from robust_med import evaluate as evaluate_lib
from robust_med.errors import ConfigError, UserError
from robust_med.tasks import get_task_class
from robust_med.tasks.base import within_image


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  margins: jax.Array   # (N_train rounded up to the device count,): AMAT's E(i), by example id
                       # (a resume on another device count re-pads them)
  xi: jax.Array        # (K',): AMAT's thresholds (methods.xi_names), NaN until measured


def learning_rate(opt_config, total_steps: int) -> optax.Schedule:
  """The learning rate against the step: linear warm-up, then cosine decay to 0."""
  return optax.warmup_cosine_decay_schedule(
      0.0 if opt_config.warmup_steps else opt_config.learning_rate, opt_config.learning_rate,
      opt_config.warmup_steps, max(total_steps, opt_config.warmup_steps + 1))


def make_optimizer(opt_config, total_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate(opt_config, total_steps)
  return optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm),
                     optax.adamw(schedule, weight_decay=opt_config.weight_decay))


def state_shardings(state: TrainState, mesh) -> TrainState:
  rep = sharding.replicated(mesh)
  shardings = jax.tree.map(lambda _: rep, state)
  return shardings.replace(margins=sharding.data_sharding(mesh))


def init_state(model, tx, sample_image: np.ndarray, *, num_train: int, num_xi: int,
               initial_margin: float, seed: int, mesh) -> TrainState:
  """A fresh state placed on the mesh; margins padded to a multiple of the device count."""
  init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
  params = compile_cache.run_once(lambda k, x: model.init(k, x)['params'], init_key,
                                  jnp.asarray(sample_image[:1]))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=compile_cache.run_once(tx.init, params),
                     rng=rng,
                     margins=jnp.full((sharding.round_up(num_train, mesh.devices.size),),
                                      initial_margin, jnp.float32),
                     xi=jnp.full((num_xi,), jnp.nan, jnp.float32))
  return sharding.put_global(state, state_shardings(state, mesh))


def make_train_step(task, model, method, tx, augment=None, value_range=None, *,
                    noise_sigma: float = 0.0):
  """The pure train step `(state, batch) -> (state, metrics)` of `method` on `task`.

  With `augment` (`augment.AugmentSettings`) the batch is first augmented by `task.augment`
  (clipped to `value_range`), and the methods get a second augmented view of the same samples.
  With `noise_sigma` > 0 Gaussian noise of that std is then added to each image (not clipped, not
  on padding), the training of a randomized-smoothing base model (Cohen et al. 2019).
  The model applied is the head's `training_model` (e.g. with deep supervision's outputs).
  """
  model = task.training_model(model)

  def step(state: TrainState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    ids = batch['id']
    margins = state.margins[ids]
    second_view = None
    if augment is not None:
      key, geometry_key, intensity_key = jax.random.split(key, 3)
      original = batch
      batch = task.augment(original, intensity_key, augment, geometry_key, value_range)
      # The second view shares the first one's geometry unless the head's outputs do not move
      # with the image (then both are drawn independently).
      shared = geometry_key if task.outputs_move_with_image else None
      second_view = lambda k: task.augment(original, k, augment, shared, value_range)['image']
    if noise_sigma > 0 and not getattr(method, 'draws_noise', False):
      key, noise_key = jax.random.split(key)
      noise = jax.random.normal(noise_key, batch['image'].shape, batch['image'].dtype)
      batch = {**batch, 'image': within_image(batch, batch['image'] + noise_sigma * noise)}

    def attack_outputs(x):  # Parameters held constant: attacks only move the input (not padding).
      return model.apply({'params': state.params}, within_image(batch, x))

    def attack_terms(x):
      return task.loss_terms(attack_outputs(x), batch)

    def loss_fn(params):
      outputs = lambda x: model.apply({'params': params}, within_image(batch, x))
      terms_of = lambda out: task.loss_terms(out, batch)
      objective = methods.Objective(
          lambda x: terms_of(outputs(x)), lambda x: methods.total(attack_terms(x)), attack_terms,
          score_of=lambda out: task.xi_score(out, batch),
          outputs=outputs, terms_of=terms_of, divergence=task.divergence, second_view=second_view,
          attack_outputs=attack_outputs,
          smoothed_loss=lambda out: task.smoothed_loss(out, batch))
      loss, new_margins, metrics = method(objective, batch['image'], margins, state.xi, key)
      return loss, (new_margins, metrics)

    (_, (new_margins, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if method.uses_margins:
      state = state.replace(margins=state.margins.at[ids].set(new_margins))
    metrics = dict(metrics, grad_norm=optax.global_norm(grads))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def augment_settings(config):
  """`(settings, value_range)` for `make_train_step`: the `augment` section when
  `config.method.augment` is on (else None), and the input range the augmented images are
  clipped to (`config.attack.clip`, the valid input range; None when unclipped)."""
  if not config.method.get('augment', False):
    return None, None
  from robust_med import augment as augment_lib
  clip = tuple(config.attack.clip) or None
  return augment_lib.AugmentSettings.from_config(config.augment), clip


def jit_train_step(step_fn, state: TrainState, mesh):
  shardings = state_shardings(state, mesh)
  return jax.jit(step_fn, in_shardings=(shardings, sharding.data_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)


def per_sample_clean_terms(task, model, params, arrays, mesh, batch_size: int,
                           with_score: bool = False) -> dict:
  """Per-sample clean loss terms {name: (N,)} of `params` on `arrays` (for ξ), and with
  `with_score` the head's per-sample score (`Task.xi_score`) under the key 'xi_score'.

  In a multi-process run the outputs are replicated, so that every process can read them."""
  replicate = {'out_shardings': sharding.replicated(mesh)} if sharding.is_multiprocess() else {}
  # The train step's model, so ξ is in the units of the terms it is compared with (deep
  # supervision's weighted terms on 2-D inputs; on whole volumes the sliding window gives the
  # logits alone, as the ξ of a patch-trained model is measured on whole volumes anyway).
  model = task.training_model(model)

  def terms(p, b):
    out = model.apply({'params': p}, b['image'])
    values = dict(task.loss_terms(out, b))
    if with_score:
      values['xi_score'] = task.xi_score(out, b)
    return values

  fn = jax.jit(terms, **replicate)
  return evaluate_lib.per_sample_outputs(lambda _, b: fn(params, b), arrays, mesh, batch_size)


def need_trained_run(workdir: str, key: str, alternative: str) -> None:
  """One `UserError` naming `config.<key>` when `workdir` holds no finished checkpoint: train
  the model there first, or take `alternative`."""
  if not os.path.isdir(checkpointing.checkpoint_dir(workdir)):
    raise UserError(f'config.{key} = {workdir!r} has no checkpoints ({os.path.abspath(workdir)}): '
                    f'train the STD model there first (python -m robust_med.main --config=<the '
                    f'same config file with std in its name> --workdir={workdir}), point it at '
                    f'such a run, or pass {alternative}.')


class MetricsLog:
  """Appends one JSON object per line to `workdir/metrics.jsonl` (in a multi-process run only
  process 0 writes; the others' writes are dropped), and each record with a step to TensorBoard
  (`tb`, a `tensorboard_log.Writer`, when given)."""

  def __init__(self, workdir: str, tb: tensorboard_log.Writer | None = None):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = jax.process_index() == 0
    self.tb = tb

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    record = {k: (float(v) if isinstance(v, (np.floating, np.integer, jax.Array)) else v)
              for k, v in record.items()}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self.tb is not None:
      tensorboard_log.train_record(self.tb, record)


def _check_finite(metrics: dict, step: int, method: str) -> None:
  loss = float(metrics['loss'])
  if not np.isfinite(loss):
    raise UserError(f'The training loss became {loss} at step {step} (method {method}): lower '
                    'config.optimizer.learning_rate or check the data normalisation; the last '
                    'checkpoint written before this step is intact.')


class Trainer:
  """Everything a training run needs, built from a config; `run()` trains and evaluates."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise UserError(f'--workdir={workdir} is a file: pass a folder (new, or a run to resume).')
    self.task = get_task_class(config.task)(config)
    self.train_data, self.info, self.num_train, self.input_example = self._training_split()
    self.eval_data, self.eval_info = self.task.load_split(config.data.eval_split)
    # The run's config as given (config.json) and with its budgets in the model's units.
    self.given_config = config
    self.config = config = units.resolve(config, self.input_example.shape[1:])
    self.model = precision.build_model(self.task, self.info)
    self.mesh = sharding.make_mesh(config.mesh.num_devices)
    self.offline_record = None
    if config.method.get('fgsm_source', 'online') == 'offline':
      need_trained_run(config.method.fgsm_checkpoint, 'method.fgsm_checkpoint',
                       '--config.method.fgsm_source=online to make the copies at every step')
      from robust_med import offline_augmentation
      self.train_data, self.offline_record = offline_augmentation.augment_training_set(
          config, self.task, self.info, self.train_data, self.mesh)
      self.num_train = len(self.train_data['id'])  # The copies join the originals.
    n_dev = self.mesh.devices.size
    if config.batch_size % n_dev:
      raise ConfigError(f'config.batch_size = {config.batch_size} is not divisible by the '
                        f'{n_dev} devices of the mesh: use a multiple of {n_dev}.')
    check_training_size(self.num_train, config.batch_size, config.data.train_split)
    self.steps_per_epoch = self.num_train // config.batch_size
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.tx = make_optimizer(config.optimizer, self.total_steps)
    self.lr = learning_rate(config.optimizer, self.total_steps)
    self.method = methods.build_method(
        config.method, config.attack,
        config_base.physical_settings(config, config.attack.get('kind', 'pixel')))
    self.std_method = methods.Std()
    self.warmup_steps = 0
    if self.method.needs_xi and config.method.xi_source == 'checkpoint':  # Before any writing.
      need_trained_run(config.method.xi_checkpoint, 'method.xi_checkpoint',
                       '--config.method.xi_source=warmup to measure ξ after a warm-up instead')
    if self.method.needs_xi and config.method.xi_source == 'warmup':
      self.warmup_steps = self.steps_per_epoch * config.method.xi_warmup_epochs
      if self.warmup_steps >= self.total_steps:
        raise ConfigError(f'config.method.xi_warmup_epochs = {config.method.xi_warmup_epochs} '
                          f'leaves no AMAT epochs out of num_epochs = {config.num_epochs}: raise '
                          'num_epochs or lower xi_warmup_epochs.')
    self.meta = {'task': self.task.name, 'method': config.method.name,
                 'num_train': self.num_train, 'loss_terms': list(self.task.loss_term_names),
                 'data': self.task.data_signature(self.info)}
    os.makedirs(workdir, exist_ok=True)
    self.tb = tensorboard_log.Writer(workdir, 'train', active=tensorboard_log.enabled(config))
    self.log = MetricsLog(workdir, self.tb)
    if self.offline_record is not None:
      self.log.write(self.offline_record)
    unit_report = units.report(config)
    if unit_report:  # Say once how the stated budgets map onto this model's input.
      self.log.write({'type': 'units', **unit_report})
      if jax.process_index() == 0:
        print(f'note: budgets are stated for the paper\'s {unit_report["paper_shape"]} input; '
              f'on this model\'s input they are × {unit_report["model_per_paper"]:.4g} '
              f'(noise levels {unit_report["noise_levels_paper"]} → '
              f'{[round(e, 4) for e in unit_report["noise_levels_model"]]}; '
              'docs/fidelity.md)', file=sys.stderr)
    self._curve_evaluator = self._curve_data = None

  def _training_split(self):
    """(arrays, info, N, one zero input) of the training split. From memory: the loaded
    arrays. From records (config.data.pipeline = 'grain'): no arrays — N, the input's shape and
    the info come from the records' header, and the batches and ξ's pass read the records as
    they go, so the split is never held in memory."""
    config = self.config
    split = config.data.train_split
    if config.data.get('pipeline', 'memory') == 'grain':
      from robust_med.data import records  # Local import: needs tfds.
      head = records.header(config, split)
      info = head.info
      if info is None:  # The head's info is not a dataclass: its loader says it.
        _, info = self.task.load_split(split)
      dtype, shape = head.columns['image']
      return None, info, head.num_records, np.zeros((1, *shape), dtype)
    arrays, info = self.task.load_split(split)
    return arrays, info, len(arrays['id']), np.zeros_like(arrays['image'][:1])

  def _training_source(self):
    """The training split for a pass over it in order (ξ): the arrays, or its records."""
    if self.train_data is not None:
      return self.train_data
    from robust_med.data import pipeline  # Local import: needs grain.
    return pipeline.records_source(self.config, self.config.data.train_split)

  def fresh_state(self) -> TrainState:
    return init_state(self.model, self.tx, self.input_example, num_train=self.num_train,
                      num_xi=len(methods.xi_names(self.task.loss_term_names,
                                                  self.config.method.xi_mode)),
                      initial_margin=self.config.method.delta_eps, seed=self.config.seed,
                      mesh=self.mesh)

  def restore_or_init(self, mngr) -> TrainState:
    state = self.fresh_state()
    step = mngr.latest_step()
    if step is None:
      return state
    checkpointing.check_compatible(checkpointing.read_meta(mngr, step), self.meta,
                                   checkpointing.checkpoint_dir(self.workdir))
    checkpointing.check_shapes(mngr, step, {'params': state.params},
                               'use a new --workdir for this model (or the config that wrote it).')
    saved = checkpointing.saved_shapes(mngr, step).get('margins')
    if saved is None or saved == state.margins.shape:
      return checkpointing.restore(mngr, step, state)
    # Written on another device count: the margins' padding to it differs. Read them whole,
    # then pad the N real ones to this mesh.
    target = state.replace(margins=jax.ShapeDtypeStruct(
        saved, state.margins.dtype, sharding=sharding.replicated(self.mesh)))
    restored = checkpointing.restore(mngr, step, target)
    margins = sharding.host_value(restored.margins)[:self.num_train]
    padded = np.asarray(sharding.host_value(state.margins)).copy()
    padded[:len(margins)] = margins
    return restored.replace(margins=sharding.put_global(
        padded, sharding.data_sharding(self.mesh)))

  def measure_xi(self, params) -> np.ndarray:
    """ξ from per-sample clean training losses of a model trained on clean data."""
    mc = self.config.method
    if mc.xi_source == 'checkpoint':  # Its presence was checked in __init__.
      mngr = checkpointing.reader(mc.xi_checkpoint)
      step = checkpointing.pick_step(mngr)
      checkpointing.check_compatible(checkpointing.read_meta(mngr, step),
                                     {'task': self.task.name, 'method': 'std'}, mc.xi_checkpoint)
      params = checkpointing.restore_params(
          mngr, step, params, fix='ξ needs an STD run of the same model: set '
          'config.method.xi_checkpoint to one.')
      mngr.close()
    terms = per_sample_clean_terms(self.task, self.model, params, self._training_source(),
                                   self.mesh, self.config.eval.batch_size, mc.xi_mode == 'score')
    scores = terms.pop('xi_score', None)
    return methods.estimate_xi(terms, mc.xi_stat, mc.xi_mode, scores)

  def train(self) -> TrainState:
    config = self.config
    mngr = checkpointing.manager(self.workdir, max_to_keep=config.keep_checkpoints)
    state = self.restore_or_init(mngr)
    # Written once the checkpoint is known to match, so a refused resume leaves the run intact.
    if jax.process_index() == 0:
      reports.write_json(os.path.join(self.workdir, 'config.json'),
                         json.loads(self.given_config.to_json_best_effort()))
    self.tb.text('config', '```\n' + self.given_config.to_json_best_effort(indent=2) + '\n```', 0)
    sigma = float(config.method.get('noise_sigma', 0.0))
    main_step = jit_train_step(make_train_step(self.task, self.model, self.method, self.tx,
                                               *augment_settings(config), noise_sigma=sigma),
                               state, self.mesh)
    std_step = (jit_train_step(make_train_step(self.task, self.model, self.std_method, self.tx,
                                               *augment_settings(config), noise_sigma=sigma),
                               state, self.mesh)
                if self.warmup_steps else None)
    step = int(state.step)
    xi_ready = not (self.method.needs_xi and np.isnan(jax.device_get(state.xi)).any())
    bar = tqdm(total=self.total_steps, initial=step, desc=f'train {config.method.name}',
               disable=not config.progress_bar or jax.process_index() != 0, file=sys.stderr,
               dynamic_ncols=True)
    pending: list[dict] = []
    t_log = time.time()
    while step < self.total_steps:
      epoch, skip = divmod(step, self.steps_per_epoch)
      t_epoch = time.time()
      for batch in self._epoch_batches(epoch, skip):
        if step >= self.total_steps:  # A run cut short (total_steps lowered) stops mid-epoch.
          break
        if not xi_ready and step >= self.warmup_steps:
          xi, xi_ready = self.measure_xi(state.params), True
          state = state.replace(xi=sharding.put_global(jnp.asarray(xi),
                                                       sharding.replicated(self.mesh)))
          mode = config.method.xi_mode
          names = methods.xi_names(self.task.loss_term_names, mode)  # ξ's order.
          self.log.write({'type': 'xi', 'step': step, 'source': config.method.xi_source,
                          'stat': config.method.xi_stat, 'mode': mode,
                          **{f'xi/{k}': float(v)
                             for k, v in zip(names, methods.xi_display(xi, mode))}})
        fn = std_step if step < self.warmup_steps else main_step
        state, metrics = fn(state, self._put_batch(batch))
        step += 1
        pending.append(metrics)
        bar.update(1)
        if step % config.log_every_steps == 0 or step == self.total_steps:
          self._log_train(pending, step, epoch, t_log, state)
          bar.set_postfix(loss=f'{self.last_loss:.4f}')
          pending, t_log = [], time.time()
        if step % config.checkpoint_every_steps == 0 or step == self.total_steps:
          if pending:
            self._log_train(pending, step, epoch, t_log, state)
            pending, t_log = [], time.time()
          checkpointing.save(mngr, step, state, self.meta)
      if skip == 0:
        jax.block_until_ready(state)  # Time the epoch's work, not its dispatch.
        self.log.write({'type': 'epoch', 'epoch': epoch, 'step': step,
                        'seconds': time.time() - t_epoch})
      every = config.eval.every_epochs
      if every and ((epoch + 1) % every == 0 or step == self.total_steps):
        self.log_learning_curve(state.params, epoch, step)
      if self.method.uses_margins:  # A histogram snapshot of all margins per epoch.
        margins = self.host_margins(state)
        self.log.write({'type': 'margins', 'epoch': epoch, 'step': step,
                        **margins_lib.histogram(margins)})
        self.tb.histogram('margins', margins, step)
      self.tb.flush()
    bar.close()
    mngr.close()
    self.tb.close()
    return state

  def _epoch_batches(self, epoch: int, skip: int = 0):
    """The epoch's training batches after the first `skip`: whole batches in one process; in a
    multi-process run only this process's rows of each (the same) global batch. From memory, or
    with config.data.pipeline = 'grain' from the prepared records (the same batches), as the
    head's `training_batch` makes them (e.g. patches), cut where grain reads."""
    from robust_med.data import pipeline  # grain is imported only by runs that train.
    rows = (sharding.local_rows(self.mesh, self.config.batch_size) if sharding.is_multiprocess()
            else None)
    return pipeline.train_batches(self.config, epoch=epoch, skip=skip, arrays=self.train_data,
                                  rows=rows, transform=self.task.training_batch)

  def _put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    if not sharding.is_multiprocess():
      return sharding.put_batch(batch, self.mesh)
    return sharding.put_batch(batch, self.mesh, global_size=self.config.batch_size)

  def log_learning_curve(self, params, epoch: int, step: int) -> None:
    """Clean metrics on the evaluation subset (config.eval.max_samples of eval_split) as a 'val'
    record: the learning curve that tells whether a run has reached its plateau. Not written in
    multi-process runs (the evaluator gathers its outputs on one host); a note says so once."""
    if sharding.is_multiprocess():
      if self._curve_evaluator is None and jax.process_index() == 0:
        print('note: config.eval.every_epochs is ignored in a multi-process run (no \'val\' '
              'records); evaluate the checkpoints with python -m robust_med.evaluate on one host.',
              file=sys.stderr)
      self._curve_evaluator = False
      return
    if self._curve_evaluator is None:
      self._curve_evaluator = evaluate_lib.make_evaluator(self.task, self.model, self.mesh,
                                                          self.config)
      self._curve_data = evaluation_subset(self.eval_data,
                                                        self.config.eval.max_samples)
    row = self._curve_evaluator.clean(params, self._curve_data)
    self.log.write({'type': 'val', 'epoch': epoch, 'step': step,
                    'split': self.config.data.eval_split, **row})
    if self.tb.active and tensorboard_log.enabled(self.config, 'example_images') and step > self.tb.skip_through:
      fig = evaluate_lib.examples_figure(self._curve_evaluator, params, self._curve_data,
                                         self.config.eval.noise_levels,
                                         title=f'{self.config.method.name}, step {step}')
      self.tb.png('examples', reports.figure_png(fig), step)

  def host_margins(self, state: TrainState) -> np.ndarray:
    """All N training margins on the host (the padding to the device count dropped); in a
    multi-process run gathered from every process (all processes must call it together)."""
    return sharding.host_value(state.margins)[:self.num_train]

  def _log_train(self, pending: list[dict], step: int, epoch: int, since: float,
                 state: TrainState) -> None:
    host = jax.device_get(pending)  # Waits for the steps to finish, so the timing is honest.
    seconds = time.time() - since
    means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    self.last_loss = means['loss']
    _check_finite(means, step, self.config.method.name)
    for m in host:
      _check_finite(m, step, self.config.method.name)
    if self.method.uses_margins:
      means.update(margins_lib.margin_stats(self.host_margins(state)))
    self.log.write({'type': 'train', 'step': step, 'epoch': epoch,
                    'steps_per_second': len(pending) / max(seconds, 1e-9),
                    'lr': float(self.lr(step - 1)), **means})

  def evaluate(self, params, step: int | None = None) -> dict:
    """Clean metrics, robustness curves, gradient-masking checks and examples on the evaluation
    split (`config.data.eval_split`); writes robustness.json, robustness.png and examples.png
    (and margins.png for methods with margins) into the workdir and warns on stderr about failed
    checks."""
    cfg = self.config
    evaluator = evaluate_lib.make_evaluator(self.task, self.model, self.mesh, cfg)
    extra = {'method': cfg.method.name,
             **evaluate_lib.data_provenance(cfg, cfg.data.eval_split, len(self.eval_data['id'])),
             'checkpoint': {'workdir': os.path.abspath(self.workdir), 'step': step}}
    evaluate_lib.note_subset(self.task, self.eval_info, extra)
    if self.method.uses_margins:
      margins_lib.plot(self.workdir, os.path.join(self.workdir, 'margins.png'))
    report = evaluate_lib.evaluate_and_write(evaluator, params, self.eval_data, cfg, self.workdir,
                                             extra, self.info)
    for name, rows in report['curves'].items():
      for row in rows:
        self.log.write({'type': 'eval', 'norm': report['attack']['norm'], 'attack': name,
                        **{k: v for k, v in row.items() if k != 'worst_of'}})
    return report


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it has checkpoints), then evaluates robustness.

  A multi-process run trains only (returns {}): its evaluation runs afterwards on one host with
  `python -m robust_med.evaluate --workdir=...`, which reads the checkpoint every process wrote."""
  trainer = Trainer(config, workdir)
  state = trainer.train()
  if sharding.is_multiprocess():
    if jax.process_index() == 0:
      print(f'note: trained with {jax.process_count()} processes; the robustness evaluation is '
            'not run in a multi-process run: evaluate the checkpoint on one host with '
            f'python -m robust_med.evaluate --workdir={workdir}', file=sys.stderr)
    return {}
  return trainer.evaluate(state.params, int(state.step))
