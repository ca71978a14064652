"""One run: train, evaluate and report, then the stages, then the file.

`run(config, workdir)` is the entry point that the command line, sweeps,
notebooks and benchmarks call. It resumes from the latest checkpoint in
``workdir``; the training loop is the trainer's own (`Trainer.fit`), with
logging, evaluation and checkpoints in its callback.
"""

import errno
import importlib.util
import logging
import os
import re
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from sparsify.core import masking
from sparsify.experiment import checkpoint
from sparsify.experiment import config as config_lib
from sparsify.experiment import errors
from sparsify.experiment import files
from sparsify.experiment import metrics as metrics_lib
from sparsify.experiment import plots
from sparsify.experiment import stages
from sparsify.experiment import trainer as trainer_lib
from sparsify.experiment import workdir as workdir_lib

log = logging.getLogger("sparsify")


def _checkpointable(state: trainer_lib.TrainState) -> dict[str, Any]:
  return {"params": state.params, "opt_state": state.opt_state,
          "batch_stats": state.batch_stats, "step": state.step,
          "rng": state.rng, "data_step": state.step}


class _Logger:
  """The training loop's callback: metrics, evaluations and checkpoints.

  Wall time per step over each logging interval, minus time spent in
  evaluation; input time is the part spent fetching and placing batches.
  A checkpoint is saved every ``train.checkpoint_every`` steps, at the
  end, and at the first logging step after ``train.checkpoint_seconds``
  have passed since the last one (so that a short run is protected too).
  """

  def __init__(self, trainer, writer, mngr, start):
    self.trainer, self.writer, self.mngr = trainer, writer, mngr
    self.input_time, self.paused = 0.0, 0.0
    self.last_log, self.last_step = time.perf_counter(), start
    self.last_save = time.monotonic()
    self.metrics = []

  def __call__(self, done, state, metrics, waited):
    trainer, cfg = self.trainer, self.trainer.config.train
    self.input_time += waited
    self.metrics.append(metrics)
    logged = done % cfg.log_every == 0 or done == trainer.total_steps
    if logged:
      jax.block_until_ready(state)
      means = jax.tree.map(lambda *x: float(np.mean(x)),
                           *jax.device_get(self.metrics))
      elapsed = time.perf_counter() - self.last_log - self.paused
      n = done - self.last_step
      scalars = {f"train/{k}": v for k, v in means.items()}
      scalars["time/step_ms"] = 1e3 * elapsed / n
      scalars["time/input_ms"] = 1e3 * self.input_time / n
      scalars.update(trainer_lib.sparsity_per_layer(state.params))
      scalars.update(trainer_lib.scales_per_layer(state.params))
      self.writer.write(done, scalars)
      self.metrics, self.input_time, self.paused = [], 0.0, 0.0
      self.last_log, self.last_step = time.perf_counter(), done
    epoch_end = done % trainer.steps_per_epoch == 0
    epoch = done // trainer.steps_per_epoch
    if (epoch_end and epoch % cfg.eval_every_epochs == 0
        and done != trainer.total_steps):
      t = time.perf_counter()
      self.writer.write(done, trainer.evaluate(state))
      self.paused += time.perf_counter() - t
    overdue = logged and (time.monotonic() - self.last_save
                          >= cfg.checkpoint_seconds)
    if (done % cfg.checkpoint_every == 0 or done == trainer.total_steps
        or overdue):
      checkpoint.save(self.mngr, done, _checkpointable(state))
      self.last_save = time.monotonic()


# A full disk or quota, a read-only or failing file system, no permission.
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO,
                 errno.EACCES, errno.EPERM)


def _write_error(e: BaseException) -> OSError | None:
  """The write failure ``e`` is or reports, or None.

  Orbax's background writes fail with a ``ValueError`` that carries the
  operating system's error code as text (``[os_error_code='28']``).
  """
  if isinstance(e, OSError):
    return e if e.errno in _WRITE_ERRORS else None
  if isinstance(e, errors.RunError):
    return None
  found = re.search(r"os_error_code='(\d+)'", str(e))
  if found and int(found.group(1)) in _WRITE_ERRORS:
    code = int(found.group(1))
    path = re.search(r'local file "([^"]+)"', str(e))
    return OSError(code, os.strerror(code), path.group(1) if path else None)
  return None


def _write_failed(workdir: str, e: OSError) -> errors.RunError:
  return errors.RunError(
      f"cannot write in {workdir}: {e.strerror or e} "
      f"({getattr(e, 'filename', None) or 'a file of the run'}); the run "
      "stopped, its last checkpoint and the files already written are kept")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and reports one run, then its stages; resumes.

  The run holds ``workdir`` (`sparsify.experiment.workdir.claim`) from
  start to end. ``results.json`` is written when training ends and again
  with the stages' results; a stage or plot that fails leaves the
  checkpoints and the files written before it.

  Args:
    config: an experiment config (see `sparsify.default_config`).
    workdir: where checkpoints, TensorBoard events, ``metrics.jsonl``,
      ``report.json``, ``results.json`` and (with stages) ``post.json`` and
      ``model.spz`` are written.

  Returns:
    The final results: eval accuracy and loss, steps, timings, the
    compression report as a dict and, with stages, their results.

  Raises:
    ConfigError: a field of the config is invalid, ``workdir`` holds a run of
      another config or is in use, or no checkpoint of it can be restored.
    MissingDataError: the dataset is not on this machine.
    RunError: training diverged (`NonFiniteError`: the loss or parameters
      are not finite; the message names the step and the last good
      checkpoint, and nothing is written from the non-finite weights), or
      the workdir could not be written (e.g. a full disk).

  Example:
    A smoke test, one step of 128 images; the report table and a summary
    line are printed:

    >>> import tempfile
    >>> import sparsify
    >>> config = sparsify.default_config()
    >>> config.model.name = 'mlp'
    >>> config.model.kwargs.hidden = (32,)
    >>> config.train.epochs = 0.02
    >>> with tempfile.TemporaryDirectory() as workdir:
    ...   results = sparsify.run(config, workdir)
    layer ...
    mlp on embedded_mnist, none: eval accuracy ...
    >>> results['steps'], results['report']['total']['params']
    (1, 25450)
  """
  trainer = trainer_lib.Trainer(config, workdir)
  try:
    return _run(trainer, config, workdir)
  except (OSError, ValueError, RuntimeError) as e:
    error = _write_error(e)
    if error is None:
      raise
    raise _write_failed(workdir, error) from e
  finally:
    workdir_lib.release(workdir)


def _train(trainer, config, workdir):
  """Restores or initializes, trains; ``(state, final metrics, seconds)``."""
  state = trainer.init_state()
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  try:
    restored = checkpoint.restore_or_init(mngr, _checkpointable(state))
  except config_lib.ConfigError:
    mngr.close()
    raise
  state = state.replace(
      params=restored["params"], opt_state=restored["opt_state"],
      batch_stats=restored["batch_stats"], step=restored["step"],
      rng=restored["rng"])
  state = jax.device_put(state, trainer.replicated)
  start = int(restored["data_step"])
  if start:
    log.info("resumed from step %d in %s", start, workdir)
  else:  # for the weight histograms of `sparsify.plots`
    plots.save_weights(workdir, jax.device_get(state.params), "before")
  writer = metrics_lib.MetricWriter(workdir,
                                    quiet_prefixes=("sparsity/", "scale/"))
  loop_start = time.perf_counter()
  try:
    state = trainer.fit(state, trainer.total_steps, start=start,
                        callback=_Logger(trainer, writer, mngr, start))
  except trainer_lib.NonFiniteError as e:
    mngr.wait_until_finished()
    good = checkpoint.last_good_step(mngr)
    mngr.close()
    writer.close()
    where = (f"the last good checkpoint, step {good}, is kept in "
             f"{mngr.directory}" if good is not None else
             "no finite checkpoint was saved before it")
    raise trainer_lib.NonFiniteError(
        e.step, f"{e}; {where}; nothing was written from the non-finite "
        "weights (lower optimizer.learning_rate, or look at the metrics "
        "before that step in metrics.jsonl)") from None
  except BaseException:
    mngr.close()
    writer.close()
    raise
  mngr.wait_until_finished()
  mngr.close()
  train_seconds = time.perf_counter() - loop_start
  final = trainer.evaluate(state)
  writer.write(int(state.step), final)
  writer.close()
  return state, final, train_seconds


def _run(trainer, config, workdir):
  state, final, train_seconds = _train(trainer, config, workdir)
  report = trainer.report(state)
  print(report.table())
  total = report.total
  method = config_lib.describe(config)
  print(f"\n{config.model.name} on {config.data.name}, {method}: eval "
        f"accuracy {100 * final['eval/accuracy']:.2f} %, {total.nonzeros:,} "
        f"of {total.params:,} weights nonzero ({total.sparsity:.1%} sparse), "
        f"{total.bytes_sparse / 1024:.1f} KiB vs {total.bytes_dense / 1024:.1f}"
        f" KiB dense ({total.compression_ratio:.1f}x smaller)")
  report.to_json(os.path.join(workdir, "report.json"))
  results = {"eval_accuracy": final["eval/accuracy"],
             "eval_loss": final["eval/loss"], "steps": int(state.step),
             "train_seconds": train_seconds,
             "steps_per_epoch": trainer.steps_per_epoch,
             "model": config.model.name, "dataset": config.data.name,
             "method": method, "report": report.to_dict()}
  results_path = os.path.join(workdir, "results.json")
  # Written before the stages run, so a stage that fails loses nothing.
  files.write_json(results_path, results, default=str)
  plots.save_weights(workdir, jax.device_get(state.params), "after")
  if config.post.stages:
    post = stages.run_stages(
        trainer, jax.device_get(trainer_lib.variables_of(state)),
        jax.device_get(masking.find_masks(state.opt_state)))
    print("\n" + stages.table(post))
    results["post"] = post
    files.write_json(results_path, results, default=str)
  if config.train.plots and importlib.util.find_spec("matplotlib"):
    try:  # matplotlib is an optional dependency; plots are not results
      plots.plot_run(workdir)
    except Exception as e:  # pylint: disable=broad-except
      log.warning("plots of %s not drawn: %s", workdir,
                  str(e).splitlines()[0] if str(e) else type(e).__name__)
  return results


train_and_evaluate = run  # The name flax's examples use.
