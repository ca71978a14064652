"""What happens to a trained model after training: select, slim, quantize.

``config.post.stages`` names the stages run, in order, after
`sparsify.experiment.run.run` has trained and evaluated a model, e.g.
``'slim,finetune'`` for SSS, ``'search,finetune'`` for binary-search neuron
pruning, ``'pq'`` for product quantization into a compressed file, ``'share'``
for weight sharing of pruned layers (Deep Compression), ``'lct'``
for layer-wise ternarization. Every stage takes and returns a `Model` (the
module, its constructor arguments, its variables and its keep-masks) and
records what it measured; the run ends with a table of accuracy, parameters,
FLOPs and bytes after each stage, written to ``post.json``.

A stage is a plain function ``(context, model, stage_config) -> (model,
record)``; adding one means adding an entry to `STAGES`. Stages evaluate and
fine-tune with the run's `Trainer`: its jitted steps, its fit loop and its
optimizer chain, never a copy of them.

The structural stages (``slim``, ``search``) read the model's units from its
computation (`sparsify.structure_of`), so they work on any model the config
names, built-in or imported. A slimmed model is the original model with a
*plan*: the elements kept by each structural stage, in order; its apply
function is the traced computation at the kept widths
(`sparsify.slimmed_apply`), and the compressed file records the plan, so
that the model is rebuilt from it without any per-model code.

The file is the model: ``model.spz`` holds the variables of the last stage,
its codebook layers (``share``, ``pq``, the ternary layers of ``lct``) in
the encodings those stages attach. ``finetune`` after them keeps every
codebook (`sparsify.quantize.tie_updates`: the weights that share a value
move by their mean update) and reads the new codebooks off the fine-tuned
weights; the stages that would change the layers under their codes
(``slim``, ``search``, ``lct``) are refused after them (`stage_names`).
`run_stages` checks that every encoding decodes to its weights after each
stage, and that the file, decoded, scores the last stage's accuracy.
"""

import dataclasses
import functools
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsify import data as data_lib
from sparsify import flops as flops_lib
from sparsify import models
from sparsify import quantize
from sparsify import report as report_lib
from sparsify import spz
from sparsify.core import masking
from sparsify.core import paths
from sparsify.experiment import errors
from sparsify.experiment import files
from sparsify.structure import folding
from sparsify.structure import neuron_search
from sparsify.structure import scales
from sparsify.structure import significance
from sparsify.structure import surgery
from sparsify.structure import trace
from sparsify.structure import units
from sparsify.transforms import ternary

log = logging.getLogger("sparsify")


@dataclasses.dataclass
class Model:
  """A model between stages.

  Attributes:
    name: the `sparsify.models` name.
    kwargs: its constructor arguments (a slimmed model has smaller widths).
    variables: ``{'params': ..., 'batch_stats': ...}`` as numpy arrays.
    masks: keep-masks of the params (None: every weight kept).
    encodings: per-leaf encodings for the compressed file
      (`sparsify.compressed`), keyed ``'params/<path>'``.
    plan: what each structural stage so far removed, in order: ``((keep,
      folds), ...)`` with ``keep`` the ``{unit name: boolean array}`` of the
      elements kept (units as `sparsify.structure_of` names them in the
      model the stage received) and ``folds`` the constants of removed
      elements folded into their readers (`sparsify.slim_model`).
    input_shape: one example's shape (the model is traced at batch 1).
    train_arg: the model's training keyword (``config.model.train_arg``;
      None: the one its ``__call__`` takes).
    gates: the regex of units given gates in its params
      (``config.model.gates``; '' for none).
  """
  name: str
  kwargs: dict[str, Any]
  variables: dict[str, Any]
  masks: Any = None
  encodings: dict[str, Any] = dataclasses.field(default_factory=dict)
  plan: tuple[tuple[dict[str, np.ndarray], tuple[Any, ...]], ...] = ()
  input_shape: tuple[int, ...] | None = None
  train_arg: str | None = None
  gates: str = ""

  @functools.cached_property
  def module(self):
    """The Flax module, ``models.get_model(name, **kwargs)``."""
    return models.get_model(self.name, train_arg=self.train_arg,
                            gate_units=self.gates, **self.kwargs)

  @property
  def apply_fn(self):
    """``apply(variables, x, train=..., mutable=...)`` of the model.

    The module's own ``apply``, or for a slimmed model the module's
    computation at the widths its plan keeps.
    """
    if not self.plan:
      return self.module.apply
    return _planned_apply(self.module, (self.name, self.train_arg,
                                        self.gates),
                          self.kwargs, self.plan, self.input_shape)

  # `Trainer.state_for` takes anything with an ``apply``.
  apply = apply_fn

  def example(self) -> np.ndarray:
    """A batch of one zero input, the shape the model is traced at.

    Returns:
      Zeros of shape ``(1, *input_shape)``, float32.
    """
    if self.input_shape is None:
      raise ValueError("Model.input_shape is not set; the structural "
                       "stages trace the model on one example input")
    return np.zeros((1, *self.input_shape), np.float32)


_PLANNED: dict[int, Any] = {}


def _planned_apply(module, name, kwargs, plan, input_shape):
  """The module's apply with the plan's units removed, cached per plan."""
  key = id(plan)
  cached = _PLANNED.get(key)
  if cached is not None and cached[0] is plan and cached[1] == (
      name, repr(sorted(kwargs.items())), input_shape):
    return cached[2]
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  shapes = jax.eval_shape(functools.partial(module.init, train=False),
                          jax.random.key(0), x)
  apply = module.apply
  for keep, folds in plan:
    structure = trace.structure_of(apply, shapes, x, train=False,
                                   approximate=True)
    apply, shapes = (surgery.slimmed_apply(apply, shapes, keep, x,
                                           folds=folds, train=False),
                     surgery.slim(shapes, structure, keep))
  _PLANNED[key] = (plan, (name, repr(sorted(kwargs.items())), input_shape),
                   apply)
  return apply


# Stages that select with a validation accuracy: with one of them in
# `post.stages`, the trainer holds the validation examples out of training.
SELECTING = ("lct", "search")


class Context:
  """What the stages share: the run's trainer and the validation examples.

  Args:
    trainer: the run's `Trainer` (its data, config, steps and loop).
  """

  def __init__(self, trainer: Any):
    self.trainer = trainer
    self.config = trainer.config
    self.dataset = trainer.dataset
    self.num_classes = trainer.dataset.num_classes
    # Model selection (search, LCT decisions) never looks at the test split
    # that the final accuracy reports: it uses the examples the trainer held
    # out, or, for a run trained without holding any out, its last training
    # examples.
    validation = trainer.validation
    if validation is None:
      n = min(self.config.post.validation_examples,
              len(self.dataset.train.labels))
      validation = data_lib.Split(self.dataset.train.images[-n:],
                                  self.dataset.train.labels[-n:])
    self.validation = validation

  def accuracy(self, model: Model, variables=None, split=None) -> float:
    """Accuracy of ``model`` (or of ``variables`` in it) on a split.

    Args:
      model: the model whose module (and, by default, variables) to use.
      variables: variables to evaluate in ``model``'s module instead of its
        own; ``None`` for ``model.variables``.
      split: the examples; ``None`` for the dataset's eval split.

    Returns:
      The fraction of examples classified correctly, in [0, 1].
    """
    variables = model.variables if variables is None else variables
    return self.trainer.evaluate(model, split, variables)["eval/accuracy"]

  def finetune(self, model: Model, steps: int, learning_rate: float,
               extra: optax.GradientTransformation | None = None,
               masks: Any = None) -> dict[str, Any]:
    """Trains ``model`` for ``steps`` steps; returns its new variables.

    The trainer's optimizer (``post.finetune.optimizer`` if set), with a
    cosine schedule over ``steps`` from ``learning_rate``, the trainer's
    step and loop; ``masks`` (if any) stay enforced, and ``extra`` is
    appended after them (e.g. a ternary constraint).

    Args:
      model: the model to train, from its current variables.
      steps: the number of training steps; 0 or less trains nothing.
      learning_rate: the initial learning rate of the cosine schedule.
      extra: a transform appended to the optimizer chain, or ``None``.
      masks: keep-masks of the params; masked-out weights get no updates.

    Returns:
      The new variables (``params`` and, if the model has them,
      ``batch_stats``) as numpy arrays; ``model.variables`` if ``steps`` is
      not positive.
    """
    if steps <= 0:
      return model.variables
    full = None if masks is None else masking.fill_masks(
        masks, model.variables["params"])
    tx = self.trainer.make_tx(
        steps, learning_rate=learning_rate, compression=False,
        optimizer=self.config.post.finetune.optimizer, masks=full,
        extra=extra)
    state = self.trainer.state_for(model, model.variables, tx)
    state = self.trainer.fit(state, steps, seed=self.config.seed + 1,
                             desc="finetune")
    out = {"params": state.params}
    if state.batch_stats:
      out["batch_stats"] = state.batch_stats
    return jax.tree.map(np.asarray, jax.device_get(out))

  def epochs_to_steps(self, epochs: float) -> int:
    """Converts a number of epochs into training steps.

    Args:
      epochs: a (possibly fractional) number of passes over the train split.

    Returns:
      ``epochs`` times the steps per epoch at the config's batch size,
      rounded to the nearest integer.
    """
    return int(round(epochs * data_lib.steps_per_epoch(
        self.dataset.train, self.config.data.batch_size)))

  def measure(self, model: Model) -> dict[str, Any]:
    """Test accuracy, parameters, FLOPs and sparse bytes of ``model``.

    Args:
      model: the model to measure; its masks (if any) count as zeros.

    Returns:
      ``{'test_accuracy', 'params', 'nonzeros', 'flops', 'flops_effective',
      'bytes_sparse'}``, as in `report.compression_report`'s total.
    """
    flops = flops_lib.param_flops(model.apply_fn, model.variables,
                                  model.example(), train=False)
    rep = report_lib.compression_report(
        model.variables["params"], model.masks, flops=flops).total
    return {"test_accuracy": self.accuracy(model), "params": rep.params,
            "nonzeros": rep.nonzeros, "flops": rep.flops_dense,
            "flops_effective": rep.flops_effective,
            "bytes_sparse": rep.bytes_sparse}


def _structure(model: Model) -> list[units.Unit]:
  """The exact units of ``model``, read from its computation."""
  structure = trace.structure_of(model.apply_fn, model.variables,
                                 model.example(), train=False,
                                 approximate=True)
  return [u for u in structure if u.exact]


def _slimmed(model: Model, keep) -> Model:
  """``model`` without the elements ``keep`` removes (masks are dropped).

  Removed elements that are nonzero constants (a zero BatchNorm scale
  with a nonzero shift) are folded into the layers that read them, so the
  slim model computes what ``model`` does.
  """
  slim_apply, variables = surgery.slim_model(
      model.apply_fn, model.variables, keep, model.example(), train=False)
  return dataclasses.replace(model, variables=variables, masks=None,
                             plan=(*model.plan, (keep, slim_apply.folds)))


# ----------------------------------------------------------------- stages


def slim_stage(ctx: Context, model: Model, cfg) -> tuple[Model, dict]:
  """SSS / Network Slimming: drop the units whose scale is below threshold.

  Gates (SSS) select units when the model has them; otherwise BatchNorm
  scales (Network Slimming) do, with the threshold of
  `sparsify.slimming_threshold` at ``cfg.fraction`` when it is > 0. With
  ``cfg.relative``, a gate is dropped below ``threshold`` times the largest
  gate of its layer: a gate whose layer feeds a BatchNorm only matters
  relative to its neighbours (the BatchNorm cancels a common scale), so L1
  shrinks such a layer's gates together instead of zeroing some. Kept
  widths are rounded up to a multiple of ``cfg.multiple`` (CPU and
  accelerator kernels are faster on multiples of 8), keeping the next
  largest scales. ResNet residual branches whose block gate is at most the
  threshold are removed first (`sparsify.models.ResNet.remove_blocks`).

  Args:
    ctx: the run's `Context`.
    model: the model to slim.
    cfg: ``config.post.slim``: ``threshold``, ``fraction``,
      ``relative`` and ``multiple``.

  Returns:
    ``(model, record)``: the slimmed model, and the units per layer
    before and after (and the ResNet ``block_plan``, if blocks were
    removed).
  """
  record = {}
  # Whole blocks with zero block gates (ResNet branches) go first, then
  # channels.
  # A model that can drop whole blocks says so with a `remove_blocks`
  # method (`sparsify.models.ResNet`'s block gates).
  remove_blocks = getattr(model.module, "remove_blocks", None)
  removed = None if model.plan or remove_blocks is None else remove_blocks(
      model.variables, cfg.threshold)
  if removed is not None:
    variables, fields = removed
    kwargs = {**model.kwargs, **fields}
    model = dataclasses.replace(model, kwargs=kwargs, variables=variables)
    record["block_plan"] = list(kwargs["block_plan"])
    if not kwargs.get("channel_gates"):
      return model, record
  structure = _structure(model)
  found = scales.unit_scales(model.variables, structure)
  if not found:
    raise _unscaled(model, structure)
  gated = any(scales.scale_slots(u)[0] == "gate" for u in structure)
  threshold = cfg.threshold
  if not gated and cfg.fraction > 0:  # Network Slimming: BN scales
    threshold = scales.threshold_of_fraction(found, cfg.fraction)
  keep = {}
  for name, g in found.items():
    if gated and cfg.relative:  # scale-free gates: relative to the largest
      k = g > threshold * g.max()
    else:
      k = g >= threshold if (not gated and cfg.fraction > 0) else (
          g > threshold)
    k[np.argmax(g)] = True  # no layer vanishes
    # Round widths up to a multiple (fast kernels), adding back the next
    # largest scales: their contribution is what the gated model computes.
    want = min(g.size, -(-int(k.sum()) // cfg.multiple) * cfg.multiple)
    k[np.argsort(-g, kind="stable")[:want]] = True
    keep[name] = k
  # The scales at or below the threshold count as zero: a zero gate outputs
  # zero, a zero BatchNorm scale a constant that slim folds into the next
  # layer.
  model = dataclasses.replace(model, variables=scales.zero_scales(
      model.variables, structure, keep))
  out = _slimmed(model, keep)
  kept = units.count_kept(keep)
  full = {name: int(np.size(k)) for name, k in keep.items()}
  return out, {**record, "units_before": full, "units_after": kept}


def search_stage(ctx: Context, model: Model, cfg) -> tuple[Model, dict]:
  """Binary-search neuron pruning on the validation examples, then slim.

  Args:
    ctx: the run's `Context`.
    model: the model to prune.
    cfg: ``config.post.search``: ``tolerance``, ``norm``, ``order``,
      ``relative`` and ``finetune_steps``.

  Returns:
    ``(model, record)``: the slimmed model, and the units per layer
    before and after, the number of evaluations, the search's duration
    in seconds, the validation accuracy before and the search's log.
  """
  structure = _structure(model)

  def evaluate(variables):
    return ctx.accuracy(model, variables, ctx.validation)

  def finetune(variables, keep):
    del keep  # the search zeroes the removed neurons again afterwards
    return ctx.finetune(dataclasses.replace(model, variables=variables),
                        cfg.finetune_steps,
                        ctx.config.post.finetune.learning_rate)

  t = time.perf_counter()
  result = neuron_search.binary_search_prune(
      model.variables, evaluate, cfg.tolerance, structure=structure,
      norm=cfg.norm, order=cfg.order, relative=cfg.relative,
      finetune=finetune if cfg.finetune_steps else None)
  seconds = time.perf_counter() - t
  slimmed = _slimmed(dataclasses.replace(model, variables=result.variables),
                     result.keep)
  full = {name: int(np.size(k)) for name, k in result.keep.items()}
  return slimmed, {
      "units_before": full, "units_after": units.count_kept(result.keep),
      "evaluations": len(result.log), "search_seconds": seconds,
      "validation_baseline": result.baseline,
      "log": [s._asdict() for s in result.log]}


def finetune_stage(ctx: Context, model: Model, cfg) -> tuple[Model, dict]:
  """Trains the current model (masks and codebooks kept) for ``cfg.epochs``.

  Layers with a codebook encoding (``share``, ``pq``, ternary layers of
  ``lct``) stay on their codebook, as in Deep Compression's fine-tuning of
  the shared centroids: `sparsify.quantize.tie_updates`, last in the
  chain, moves each of their weights by the mean update of the weights
  that share its value (for a ternary layer, of the signed updates of its
  nonzero weights), so that with the codes unchanged the codebooks are
  read off the fine-tuned weights and the encodings are those of the new
  model.

  Args:
    ctx: the run's `Context`.
    model: the model to train.
    cfg: ``config.post.finetune``: ``epochs`` and ``learning_rate``.

  Returns:
    ``(model, record)``: the model with its new variables and encodings,
    and ``{'steps': ..., 'tied_layers': [path, ...]}``.
  """
  steps = ctx.epochs_to_steps(cfg.epochs)
  ties = _ties(model)
  variables = ctx.finetune(
      model, steps, cfg.learning_rate, masks=model.masks,
      extra=quantize.tie_updates(ties) if ties else None)
  tuned = _refit(dataclasses.replace(model, variables=variables))
  return tuned, {"steps": steps, "tied_layers": sorted(ties)}


def _ternary(encoding: Any) -> bool:
  """Whether an encoding is of a ternary kernel (`spz.smallest_ternary`)."""
  if isinstance(encoding, spz.TernaryLayer):
    return True
  if not isinstance(encoding, spz.SharedLayer):
    return False
  book = encoding.codebook
  return book.size == 2 and book[0] != 0 and book[1] == -book[0]


def _ties(model: Model) -> dict[str, quantize.Tie]:
  """``{param path: Tie}`` of the model's codebook encodings."""
  flat = dict(paths.named_leaves(_saved(model)["params"]))
  ties = {}
  for key, encoding in model.encodings.items():
    path = key.removeprefix("params/")
    if _ternary(encoding):
      ties[path] = quantize.sign_tie(flat[path])
    elif isinstance(encoding, spz.SharedLayer):
      ties[path] = quantize.shared_tie(encoding)
    elif isinstance(encoding, spz.PQLayer):
      ties[path] = quantize.pq_tie(encoding, encoding.mask)
  return ties


def _refit(model: Model) -> Model:
  """``model`` with its codebook encodings read off its (tied) weights."""
  flat = dict(paths.named_leaves(_saved(model)["params"]))
  encodings = dict(model.encodings)
  for key, encoding in model.encodings.items():
    path = key.removeprefix("params/")
    if _ternary(encoding):
      encodings[key] = spz.smallest_ternary(flat[path])
    elif isinstance(encoding, spz.SharedLayer):
      encodings[key] = spz.shared_layer(*quantize.refit_shared(
          quantize.SharedCode(*encoding), flat[path]))
    elif isinstance(encoding, spz.PQLayer):
      code = quantize.PQCode(encoding.codebooks, encoding.codes,
                             encoding.shape)
      encodings[key] = spz.pq_layer(
          *quantize.refit_pq(code, flat[path], encoding.mask),
          mask=encoding.mask)
  return dataclasses.replace(model, encodings=encodings)


def pq_stage(ctx: Context, model: Model, cfg) -> tuple[Model, dict]:
  """Product quantization of the Dense kernels; pruned weights stay zero.

  Each layer uses the longest sub-vector up to ``cfg.dim`` that divides its
  inputs and at most ``cfg.centroids`` (and no more than its rows)
  centroids; a layer whose PQ encoding would not be smaller than its
  lossless one is left as it is.

  Args:
    ctx: the run's `Context`.
    model: the model whose kernels to quantize.
    cfg: ``config.post.pq``: ``dim``, ``centroids`` and ``where``.

  Returns:
    ``(model, record)``: the model with quantized kernels and their
    `PQLayer` encodings, and ``{'quantized_layers': {path: {'dim',
    'centroids'}}}``.
  """
  params = model.variables["params"]
  masks = model.masks
  if masks is None:  # a pruned model without masks: its zeros are the mask
    masks = jax.tree.map(lambda p: np.asarray(p) != 0, params)
  masks = jax.tree.map(np.asarray, masking.fill_masks(masks, params))
  selected = paths.path_predicate(cfg.where or None, paths.dense_kernel)
  flat_masks = dict(paths.named_leaves(masks))
  subspaces, centroids, layers = {}, {}, {}
  for path, leaf in paths.named_leaves(params):
    if not selected(path, leaf):
      continue
    n, m = int(np.prod(np.shape(leaf)[:-1])), int(np.shape(leaf)[-1])
    # The longest sub-vector up to `dim` that divides the layer's inputs,
    # and at most one centroid per row (k-means needs k rows).
    d = max(x for x in range(1, min(cfg.dim, n) + 1) if n % x == 0)
    k = min(cfg.centroids, m)
    mask = np.asarray(flat_masks[path])
    pq_bytes = -(-quantize.pq_storage_bits(m, n, n // d, k) // 8) + (
        0 if mask.all() else -(-mask.size // 8))
    lossless = spz.encode_leaf(np.where(mask, leaf, 0)).nbytes
    if pq_bytes >= lossless:  # e.g. a small head: its codebook is the layer
      continue
    subspaces[path], centroids[path], layers[path] = n // d, k, (d, k)
  chosen = lambda path, leaf: path in layers
  if not layers:
    return model, {"quantized_layers": {}}
  quantized, codes = quantize.pq_quantize(
      params, subspaces=subspaces, centroids=centroids,
      key=jax.random.key(ctx.config.seed), masks=masks, where=chosen)
  encodings = dict(model.encodings)
  for path, code in codes.items():
    mask = np.asarray(flat_masks[path])
    encodings[f"params/{path}"] = spz.pq_layer(
        *code, mask=None if mask.all() else mask)
  variables = {**model.variables, "params": jax.tree.map(np.asarray,
                                                         quantized)}
  return dataclasses.replace(model, variables=variables,
                             encodings=encodings), {
      "quantized_layers": {p: {"dim": d, "centroids": k}
                           for p, (d, k) in sorted(layers.items())}}


def share_stage(ctx: Context, model: Model, cfg) -> tuple[Model, dict]:
  """Weight sharing of the kept weights of the Dense kernels (Deep Compression).

  Each selected kernel's kept weights are clustered by 1-D k-means into
  ``2 ** cfg.bits`` shared values (`sparsify.quantize.share_weights`)
  and stored with relative sparse indices (the file's ``shared`` encoding).

  Args:
    ctx: the run's `Context`.
    model: the model whose kernels to share.
    cfg: ``config.post.share``: ``bits`` and ``where``.

  Returns:
    ``(model, record)``: the model with shared kernels and their
    `SharedLayer` encodings, and ``{'shared_layers': [path, ...]}``.
  """
  params = model.variables["params"]
  masks = None if model.masks is None else jax.tree.map(
      np.asarray, masking.fill_masks(model.masks, params))
  shared, codes = quantize.share_params(params, bits=cfg.bits, masks=masks,
                                        where=cfg.where or None)
  encodings = dict(model.encodings)
  for path, code in codes.items():
    encodings[f"params/{path}"] = spz.shared_layer(*code)
  variables = {**model.variables, "params": jax.tree.map(np.asarray, shared)}
  return dataclasses.replace(model, variables=variables,
                             encodings=encodings), {
      "shared_layers": sorted(codes)}


def lct_stage(ctx: Context, model: Model, cfg) -> tuple[Model, dict]:
  """LCT: global magnitude pruning, then layers ternarized in order.

  From the least to the most significant layer: constrain it to
  :math:`\\{-\\sigma, 0, \\sigma\\}` on its mask, train ``cfg.steps`` steps,
  keep it if validation accuracy stays within ``cfg.budget`` of the pruned
  model's, else revert it and stop.

  Args:
    ctx: the run's `Context`.
    model: the model to prune and ternarize.
    cfg: ``config.post.lct``: ``sparsity``, ``by``, ``sigma``,
      ``sigma_learning_rate``, ``steps``, ``prune_steps``,
      ``learning_rate`` and ``budget``.

  Returns:
    ``(model, record)``: the pruned model with its accepted layers
    ternary (and their encodings), and the layer order, significances,
    accuracies and per-layer decisions.
  """
  params = model.variables["params"]
  rest = {k: v for k, v in model.variables.items() if k != "params"}
  evaluate = None
  if cfg.by == "quantization":  # the accuracy drop of each layer alone
    evaluate = lambda p: ctx.accuracy(model, {"params": p, **rest},
                                      ctx.validation)
  sig = significance.layer_significance(params, sparsity=cfg.sparsity,
                                        by=cfg.by, evaluate=evaluate)
  masks = jax.tree.map(np.asarray, sig.masks)
  pruned = dataclasses.replace(model, masks=masks, variables={
      **model.variables,
      "params": jax.tree.map(lambda p, m: np.where(m, p, 0), params, masks)})
  pruned = dataclasses.replace(pruned, variables=ctx.finetune(
      pruned, cfg.prune_steps, cfg.learning_rate, masks=masks))
  reference = ctx.accuracy(pruned, split=ctx.validation)
  pruned_test = ctx.accuracy(pruned)
  current, chosen, decisions = pruned, [], []
  for layer in sig.order:
    trial = chosen + [layer]
    tx = ternary.ternary_constrained(
        where=trial, sigma=cfg.sigma,
        sigma_learning_rate=cfg.sigma_learning_rate,
        masks={p: m for p, m in paths.named_leaves(masks) if p in trial})
    variables = ctx.finetune(current, cfg.steps, cfg.learning_rate,
                             extra=tx, masks=masks)
    candidate = dataclasses.replace(current, variables=variables)
    acc = ctx.accuracy(candidate, split=ctx.validation)
    accepted = acc >= reference - cfg.budget
    decisions.append({"layer": layer, "validation_accuracy": acc,
                      "accepted": bool(accepted)})
    log.info("lct: %s -> %.4f (%s)", layer, acc,
             "kept" if accepted else "reverted, stop")
    if not accepted:
      break
    current, chosen = candidate, trial
  # Each ternary layer in the smaller of its two lossless layouts: a bitmask
  # or relative indices, plus a sign bit per nonzero and sigma.
  encodings = dict(current.encodings)
  flat = dict(paths.named_leaves(current.variables["params"]))
  for layer in chosen:
    encodings[f"params/{layer}"] = spz.smallest_ternary(flat[layer])
  return dataclasses.replace(current, encodings=encodings), {
      "order": list(sig.order), "significance": sig.scores,
      "validation_reference": reference, "pruned_test_accuracy": pruned_test,
      "ternary_layers": chosen,
      "decisions": decisions}


STAGES = {
    "finetune": finetune_stage,
    "lct": lct_stage,
    "pq": pq_stage,
    "search": search_stage,
    "share": share_stage,
    "slim": slim_stage,
}


# Stages that attach codebook encodings (`Model.encodings`), and those that
# would change the layers under them: the second must come before the first
# (``finetune`` keeps the codebooks, see `finetune_stage`).
ENCODING = ("share", "pq", "lct")
RESHAPING = ("slim", "search", "lct")


def stage_names(stages: str) -> list[str]:
  """The stages of a ``post.stages`` string (comma-separated), checked.

  Any order of `STAGES` is allowed, except a stage of `RESHAPING`
  (``slim``, ``search``, ``lct``: they remove units, prune and retrain
  layers) after one of `ENCODING` (``share``, ``pq``, ``lct``): the codes
  those attach would no longer describe the layers.

  Args:
    stages: e.g. ``'slim, finetune'``.

  Returns:
    The stage names, in order, without blanks.

  Raises:
    ValueError: a name is not one of `STAGES`, or a stage of `RESHAPING`
      follows one of `ENCODING`.

  Example:
    >>> from sparsify.experiment import stages
    >>> stages.stage_names('slim, finetune, share')
    ['slim', 'finetune', 'share']
    >>> stages.stage_names('share, slim')
    Traceback (most recent call last):
    ...
    ValueError: post.stages: got 'share, slim'; allowed: slim before share, \
pq and lct (it would change the layers whose codes share stored)
  """
  names = [s.strip() for s in stages.split(",") if s.strip()]
  for s in names:
    if s not in STAGES:
      raise ValueError(f"post.stages: got {s!r}; allowed: a comma-separated "
                       f"list of {', '.join(sorted(STAGES))}")
  for i, s in enumerate(names):
    encoded = [e for e in names[:i] if e in ENCODING]
    if s in RESHAPING and encoded:
      raise ValueError(
          f"post.stages: got {stages!r}; allowed: {s} before "
          f"{', '.join(ENCODING[:-1])} and {ENCODING[-1]} (it would change "
          f"the layers whose codes {encoded[-1]} stored)")
  return names


def holds_out(stages: str) -> bool:
  """Whether a run with these stages holds validation examples out of training.

  Args:
    stages: a ``post.stages`` string.

  Returns:
    True if it names a stage of `SELECTING`.

  Raises:
    ValueError: it names an unknown stage.
  """
  return any(s in SELECTING for s in stage_names(stages))


def run_stages(trainer: Any, variables: dict[str, Any],
               masks: Any) -> dict[str, Any]:
  """Runs ``config.post.stages`` on a trained model; writes the results.

  Args:
    trainer: the run's `Trainer`.
    variables: the trained variables.
    masks: the trained keep-masks (from the optimizer state), or None.

  Returns:
    ``{'stages': [...], 'file': {...}}``: per stage its measurements and
    record; the compressed file's bytes on disk and the accuracy of the
    model decoded from it. Also written to ``post.json``, the file to
    ``model.spz``, both in the trainer's workdir.

  Raises:
    ConfigError: ``slim`` on a model without gates or BatchNorm scales
      (before any stage runs).
    RunError: a stage left encodings that do not decode to its
      weights, or the file decoded does not score the last stage's test
      accuracy (to one example of the eval split); post.json is then not
      written.
  """
  config, workdir = trainer.config, trainer.workdir
  names = stage_names(config.post.stages)
  os.makedirs(workdir, exist_ok=True)
  ctx = Context(trainer)
  model = Model(config.model.name, config.model.kwargs.to_dict(),
                jax.tree.map(np.asarray, variables), masks,
                input_shape=tuple(trainer.dataset.input_shape),
                train_arg=config.model.train_arg,
                gates=config.model.get("gates", ""))
  if "slim" in names:
    check_slimmable(model)
  rows = [{"stage": "trained", **ctx.measure(model)}]
  for name in names:
    t = time.perf_counter()
    model, record = STAGES[name](ctx, model, config.post[name])
    stale = _stale_encodings(model)
    if stale:  # a stage that changed weights under their codes
      raise errors.RunError(
          f"post.stages {config.post.stages!r}: after {name}, the encodings "
          f"of {', '.join(stale)} no longer decode to their weights")
    row = {"stage": name, **ctx.measure(model),
           "seconds": time.perf_counter() - t, **record}
    rows.append(row)
    log.info("%s: test accuracy %.4f, %d params", name, row["test_accuracy"],
             row["params"])
  path = os.path.join(workdir, "model.spz")
  accuracy = rows[-1]["test_accuracy"]
  params = _saved(model)
  plan, folded = _plan_record(model.plan)
  if folded:
    params[_FOLDED] = folded
  spz.save(path, params, model.encodings, metadata={
      "model": {"name": model.name, "kwargs": model.kwargs,
                "train_arg": model.train_arg, "gates": model.gates,
                "input_shape": list(model.input_shape),
                "plan": plan},
      "dataset": config.data.name, "test_accuracy": accuracy,
      "stages": [r["stage"] for r in rows]})
  file_info = evaluate_file(trainer, path)
  # The file is the model: decoded, it scores what the last stage did (to
  # one example of the eval split, for a rebuilt computation that rounds
  # differently).
  examples = len(trainer.dataset.eval.labels)
  decoded, recorded = (file_info["decoded_accuracy"],
                       file_info["recorded_accuracy"])
  if abs(decoded - recorded) > 1.0 / examples + 1e-9:
    raise errors.RunError(
        f"post.stages {config.post.stages!r}: {path} decodes to test "
        f"accuracy {decoded:.4f}, not the {recorded:.4f} recorded for the "
        f"last stage ({rows[-1]['stage']})")
  results = {"stages": rows, "file": file_info}
  files.write_json(os.path.join(workdir, "post.json"), results,
                   default=_jsonable)
  return results


def check_slimmable(model: Model) -> None:
  """Raises `ConfigError` unless ``slim`` can select units of ``model``.

  ``slim`` selects units by their gates (SSS) or BatchNorm scales (Network
  Slimming); a model with neither has nothing to select by. Only the
  model's structure is read: its variables may be shapes
  (`jax.ShapeDtypeStruct`, from `jax.eval_shape` of its ``init``).

  Args:
    model: the model the stages start from.

  Raises:
    ConfigError: naming ``post.stages``, the model's units and what is
      allowed.
  """
  structure = [u for u in trace.structure_of(
      model.apply_fn, model.variables, model.example(), train=False,
      approximate=True) if u.exact]
  if all(scales.scale_slots(u)[0] == "none" for u in structure):
    raise _unscaled(model, structure)


def check_config(config: Any, input_shape: tuple[int, ...]) -> None:
  """Raises `ConfigError` for stages the config's model cannot run.

  What can be known before training: the order of ``post.stages``
  (`stage_names`), and for ``slim`` whether the model has gates or
  BatchNorm scales (`check_slimmable`, on the model traced at shapes only).
  `run_stages` checks the same on the trained model.

  Args:
    config: the experiment config.
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.

  Raises:
    ConfigError: one line naming ``post.stages`` and what is allowed.

  Example:
    >>> from sparsify.experiment import config as config_lib
    >>> from sparsify.experiment import stages
    >>> config = config_lib.default_config()  # lenet_300_100: no gates, no BN
    >>> config.post.stages = 'slim,finetune'
    >>> stages.check_config(config, (28, 28, 1))
    Traceback (most recent call last):
    ...
    sparsify.experiment.errors.ConfigError: post.stages: slim needs gates ...
    >>> config.model.gates = '.*'  # gates at every unit
    >>> stages.check_config(config, (28, 28, 1))
  """
  try:
    names = stage_names(config.post.stages)
  except ValueError as e:
    raise errors.ConfigError(str(e)) from e
  if "slim" not in names:
    return
  model = Model(config.model.name, config.model.kwargs.to_dict(), {},
                input_shape=tuple(input_shape),
                train_arg=config.model.train_arg,
                gates=config.model.get("gates", ""))
  x = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.module.init, train=False),
                          jax.random.key(0), x)
  check_slimmable(dataclasses.replace(model, variables=shapes))


def _unscaled(model: Model, structure) -> Exception:
  """The `ConfigError` of ``slim`` on a model with nothing to select by."""
  return errors.ConfigError(
      f"post.stages: slim needs gates or BatchNorm scales to select units "
      f"by, and {model.name} (units {', '.join(u.name for u in structure)})"
      " has neither; allowed: a model with gates (model.gates='.*', preset "
      "sss) or BatchNorm scales, or stages without slim")


def _saved(model: Model) -> dict[str, Any]:
  """The variables the file stores: numpy arrays, masked weights zero."""
  variables = jax.tree.map(np.asarray, model.variables)
  if model.masks is not None:
    variables["params"] = jax.tree.map(
        np.asarray, masking.apply_masks(variables["params"], model.masks))
  return variables


def _stale_encodings(model: Model) -> list[str]:
  """The encodings of ``model`` that do not decode to the weights it holds."""
  flat = dict(paths.named_leaves(_saved(model)))
  stale = []
  for key, encoding in sorted(model.encodings.items()):
    if not hasattr(encoding, "decode"):  # an encoding's name: lossless
      continue
    leaf = flat.get(key)
    if leaf is None or not np.array_equal(
        encoding.decode(), np.asarray(leaf, np.float32)):
      stale.append(key)
  return stale


def evaluate_file(trainer: Any, path: str) -> dict[str, Any]:
  """Loads a compressed file, rebuilds its model and evaluates it.

  Returns bytes on disk, the float32 size, the accuracy recorded at save
  time and the accuracy measured now by ``trainer`` on its eval split.

  Args:
    trainer: a `Trainer` (its dataset and evaluation).
    path: a file written by `run_stages` (its metadata names the model,
      its arguments and the plan of units removed, and records
      ``test_accuracy``).

  Returns:
    ``{'path', 'bytes_on_disk', 'float32_bytes', 'recorded_accuracy',
    'decoded_accuracy'}``.
  """
  model, meta = load_model(path, trainer.dataset.input_shape)
  variables = model.variables
  measured = trainer.evaluate(model, variables=variables)["eval/accuracy"]
  info = spz.file_report(path)
  return {"path": path, "bytes_on_disk": info.file_bytes,
          "float32_bytes": spz.float32_bytes(variables["params"]),
          "recorded_accuracy": meta["test_accuracy"],
          "decoded_accuracy": measured}


def load_model(path: str, input_shape: tuple[int, ...] | None = None
               ) -> tuple[Model, dict[str, Any]]:
  """The `Model` a compressed file of `run_stages` holds, and its metadata.

  Args:
    path: the file.
    input_shape: one example's shape, for files that do not record it.

  Returns:
    ``(model, metadata)``: the model rebuilt from its name, arguments, plan
    of removed elements and folded constants; the file's metadata.
  """
  variables, meta = spz.load(path)
  spec = meta["model"]
  kwargs = {k: tuple(map(_tuples, v)) if isinstance(v, list) else v
            for k, v in spec["kwargs"].items()}
  folded = variables.pop(_FOLDED, {})
  shape = spec.get("input_shape", input_shape)
  model = Model(spec["name"], kwargs, variables,
                plan=_plan_of(spec.get("plan", ()), folded),
                input_shape=None if shape is None else tuple(shape),
                train_arg=spec.get("train_arg"),
                gates=spec.get("gates", ""))
  return model, meta


# The collection of a compressed file that holds the folded constants.
_FOLDED = "folded"


def _plan_record(plan):
  """A plan as JSON metadata, and its folds' arrays by name."""
  record, arrays = [], {}
  for i, (keep, folds) in enumerate(plan):
    entry = {"keep": {u: np.asarray(k, bool).tolist()
                      for u, k in keep.items()}, "folds": []}
    for j, f in enumerate(folds):
      name = f"stage{i}_fold{j}"
      arrays[name] = {"constants": np.asarray(f.constants),
                      "rows": np.asarray(f.rows)}
      entry["folds"].append({
          "array": name, "primitive": f.primitive, "x_side": f.x_side,
          "axis": f.axis, "w_axis": f.w_axis,
          "key": [f.key[0], list(f.key[1]), f.key[2]]})
    record.append(entry)
  return record, arrays


def _plan_of(record, arrays):
  """The plan of `_plan_record`'s metadata and arrays."""
  plan = []
  for entry in record:
    keep = {u: np.asarray(k, bool) for u, k in entry["keep"].items()}
    folds = tuple(folding.Fold(
        key=(f["key"][0], tuple(f["key"][1]), f["key"][2]),
        primitive=f["primitive"], x_side=f["x_side"], axis=f["axis"],
        w_axis=f["w_axis"],
        constants=np.asarray(arrays[f["array"]]["constants"]),
        rows=np.asarray(arrays[f["array"]]["rows"]))
        for f in entry["folds"])
    plan.append((keep, folds))
  return tuple(plan)


def _tuples(x):
  return tuple(map(_tuples, x)) if isinstance(x, list) else x


def _jsonable(x):
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def table(results: dict[str, Any]) -> str:
  """The stages as a text table, then the compressed file's line.

  Args:
    results: what `run` returns.

  Returns:
    One line per stage (accuracy, parameters, nonzeros, MFLOPs), then one
    line on the compressed file, joined with newlines.
  """
  lines = [f"{'stage':<10} {'test acc':>9} {'params':>10} {'nonzeros':>10} "
           f"{'MFLOPs':>8}"]
  for r in results["stages"]:
    flops = f"{r['flops'] / 1e6:.2f}" if r["flops"] is not None else "n/a"
    lines.append(f"{r['stage']:<10} {100 * r['test_accuracy']:>8.2f}% "
                 f"{r['params']:>10,} {r['nonzeros']:>10,} {flops:>8}")
  f = results["file"]
  lines.append(
      f"compressed file {f['path']}: {f['bytes_on_disk']:,} bytes on disk, "
      f"{f['float32_bytes'] / f['bytes_on_disk']:.1f}x smaller than float32 "
      f"params; decoded accuracy {100 * f['decoded_accuracy']:.2f} % "
      f"(recorded {100 * f['recorded_accuracy']:.2f} %)")
  return "\n".join(lines)
