"""A model search on the user's own log: ``nann-tf search-config``.

Optuna (TPE sampler, median pruner) draws configurations from a search space, trains each with
validation inside training (:mod:`nann_tf.train.validation`: early stopping picks the epochs) and
maximises the best validation figure. Test users are never looked at. The search stops when its
wall-time budget is spent; the running trial is stopped at the deadline too (its best validated
weights count).

The study lives in a directory of its own (``study.db``, Optuna's SQLite storage): run the same
command again after an interruption and it resumes. Finished trials are kept, a trial that was
running when the search stopped is run again with the same parameters, and the budget counts the
time all invocations spent, so a resumed search ends where the uninterrupted one would have.
A study remembers its dataset, base config and space; resuming it with others is an error.

Outputs: the best configuration as a TOML file the other commands take (``--config best.toml``),
a table of the trials beside it (``<output>.trials.md``), and the best trial's trained model in
``<study>/best-model`` (``nann-tf build-index --model`` takes it as it is).

The space is a mapping ``"section.key" -> choices``: a list of values (categorical; list values
such as hidden layer sizes included) or a table ``{low, high, log?, step?}`` (a float range, or an
integer range when ``low`` and ``high`` are integers). :data:`DEFAULT_SPACE` covers the knobs
that mattered on the real logs the project was tuned on; ``--space FILE`` (a TOML file with a
``[space]`` table) replaces it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from nann_tf.config import Config, ConfigError, config_from_dict
from nann_tf.errors import UserError, arg
from nann_tf.fsutil import replace_dir, write_text_atomic

__all__ = ["DEFAULT_SPACE", "SearchError", "SearchSpace", "run_search", "trials_table"]

log = logging.getLogger(__name__)

#: The default search space (see the module docstring for the syntax).
DEFAULT_SPACE: dict[str, Any] = {
    "model.variant": ["attention", "sum_pool", "two_tower"],
    "model.embedding_dim": [16, 32, 64],
    "model.item_dim": [16, 32, 64],
    "model.item_hidden": [[64], [128], [64, 64]],
    "model.score_hidden": [[64, 32], [128, 64], [64]],
    "model.dot_term": [True, False],
    "model.position_bias": [True, False],
    "train.loss": ["softmax", "nce"],
    "train.learning_rate": {"low": 3e-4, "high": 1e-2, "log": True},
    "train.weight_decay": [0.0, 1e-4, 1e-3, 1e-2],
    "train.num_negatives": [50, 100, 200, 400],
    "train.batch_size": [128, 256, 512],
}

STUDY_DB = "study.db"
BEST_MODEL = "best-model"


class SearchError(UserError, ValueError):
    """A bad search request: space, budget, study directory or dataset."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One dimension of the space: categorical ``choices``, or a range ``low..high``."""

    key: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            # Optuna's categorical choices must be scalars: list values go through their JSON.
            labels = [json.dumps(c) for c in self.choices]
            return json.loads(trial.suggest_categorical(self.key, labels))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)

    def encode(self, value: Any) -> Any:
        """A config value -> as Optuna stores it, or None when the space does not hold it."""
        if self.choices is not None:
            return json.dumps(value) if value in self.choices else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return value if self.low <= value <= self.high else None

    def decode(self, raw: Any) -> Any:
        """A value as Optuna stores it in ``trial.params`` -> the config value."""
        return json.loads(raw) if self.choices is not None else raw


class SearchSpace:
    """A checked search space.

    Raises:
      SearchError: empty space, an unknown key, an empty choice list, a bad range, or a value
        the config refuses (the message names the key and, for files, the file).
    """

    def __init__(self, raw: dict[str, Any], base: Config, src: str = "search space"):
        if not isinstance(raw, dict) or not raw:
            raise SearchError(f"{src}: the search space is empty: give at least one "
                              "\"section.key\" with its choices")
        self.params: list[Param] = []
        for key, spec in raw.items():
            self.params.append(self._param(key, spec, base, src))

    @staticmethod
    def _param(key: str, spec: Any, base: Config, src: str) -> Param:
        section, _, name = key.partition(".")
        where = f"{src}: {key!r}"
        if section not in ("model", "train") or not name:
            raise SearchError(f"{where}: expected model.<key> or train.<key> (the search tunes "
                              "the model and its training on a prepared dataset)")
        if not hasattr(getattr(base, section), name):
            fields = sorted(f.name for f in dataclasses.fields(getattr(base, section)))
            raise SearchError(f"{where}: [{section}] has no key {name!r} (keys: "
                              f"{', '.join(fields)})")
        if isinstance(spec, list):
            if not spec:
                raise SearchError(f"{where}: an empty list of choices")
            for value in spec:
                _check_value(base, section, name, value, where)
            return Param(key, choices=tuple(spec))
        if isinstance(spec, dict):
            unknown = set(spec) - {"low", "high", "log", "step"}
            if unknown or "low" not in spec or "high" not in spec:
                raise SearchError(f"{where}: a range is {{low, high, log?, step?}}, got "
                                  f"{sorted(spec)}")
            low, high = spec["low"], spec["high"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in (low, high)):
                raise SearchError(f"{where}: low and high must be numbers, got {low!r}, "
                                  f"{high!r}")
            if not low <= high:
                raise SearchError(f"{where}: an impossible range: low {low} > high {high}")
            log_scale = bool(spec.get("log", False))
            if log_scale and low <= 0:
                raise SearchError(f"{where}: a log range needs low > 0, got {low}")
            integer = isinstance(getattr(getattr(base, section), name), int) and \
                not isinstance(getattr(getattr(base, section), name), bool)
            if integer and not (isinstance(low, int) and isinstance(high, int)):
                raise SearchError(f"{where}: [{section}] {name} is an integer: give integer "
                                  f"low and high, got {low!r}, {high!r}")
            for value in (low, high):
                _check_value(base, section, name, value, where)
            return Param(key, low=low, high=high, log=log_scale, step=spec.get("step"),
                         integer=integer)
        raise SearchError(f"{where}: expected a list of choices or a table {{low, high}}, got "
                          f"{spec!r}")

    def to_dict(self) -> dict:
        return {p.key: (list(p.choices) if p.choices is not None else
                        {"low": p.low, "high": p.high, "log": p.log, "step": p.step})
                for p in self.params}

    def suggest(self, trial) -> dict[str, Any]:
        return {p.key: p.suggest(trial) for p in self.params}

    def base_params(self, base: Config) -> dict[str, Any]:
        """The base config's point of the space (its values the space holds)."""
        out = {}
        for p in self.params:
            section, _, name = p.key.partition(".")
            raw = p.encode(getattr(getattr(base, section), name))
            if raw is not None:
                out[p.key] = raw
        return out

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        by_key = {p.key: p for p in self.params}
        return {k: by_key[k].decode(v) for k, v in params.items() if k in by_key}


def _check_value(base: Config, section: str, name: str, value: Any, where: str) -> None:
    try:
        apply_overrides(base, {f"{section}.{name}": value})
    except ConfigError as e:
        raise SearchError(f"{where}: the value {value!r} is refused: {e}") from e


def apply_overrides(base: Config, overrides: dict[str, Any]) -> Config:
    """``base`` with ``{"section.key": value}`` applied, checked like a config file."""
    raw = base.to_dict()
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    name = raw.pop("name", base.name)
    return config_from_dict(raw, "search", name=name)


def load_space(path: str | Path | None, base: Config) -> SearchSpace:
    """The space of a TOML file's ``[space]`` table, or :data:`DEFAULT_SPACE`."""
    import tomllib

    if path is None:
        return SearchSpace(DEFAULT_SPACE, base, "the default search space")
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError as e:
        raise SearchError(f"{p}: no such space file") from e
    except tomllib.TOMLDecodeError as e:
        raise SearchError(f"{p}: not valid TOML: {e}") from e
    if "space" not in raw:
        raise SearchError(f"{p}: no [space] table (expected lines such as "
                          "\"train.learning_rate\" = {low = 1e-4, high = 1e-2, log = true})")
    return SearchSpace(raw["space"], base, str(p))


def _fingerprint(data_dir: Path, base: Config, space: SearchSpace) -> str:
    blob = json.dumps({"data": str(data_dir.resolve()), "config": base.to_dict(),
                       "space": space.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Deadline:
    """A Keras callback stopping training at a wall-clock deadline (built lazily: keras is
    imported only when a search runs)."""

    def __new__(cls, deadline: float, clock: Callable[[], float]):
        import keras

        class Deadline(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.hit = False

            def on_train_batch_end(self, batch, logs=None):
                if clock() >= deadline:
                    self.hit = True
                    self.model.stop_training = True

        return Deadline()


def _trial_seconds(trial) -> float:
    """The time a trial trained: its own record (kept up to date at every validation, so an
    interrupted trial counts until its last one, not the time until the search resumed)."""
    if "seconds" in trial.user_attrs:
        return float(trial.user_attrs["seconds"])
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return 0.0


# Long on purpose: a resumable study's lifecycle (checks, its storage, trials within the
# budget, the best config written) over state every phase shares.
def run_search(base: Config, data_dir: str | Path, output: str | Path, *,
               budget_minutes: float, study_dir: str | Path | None = None,
               space: SearchSpace | None = None, max_trials: int = 0, seed: int = 0,
               clock: Callable[[], float] = time.monotonic) -> dict:
    """Runs (or resumes) a model search and writes the best config.

    Args:
      base: the configuration the search starts from (keys outside the space keep its values;
        its ``[train]`` validation keys drive every trial's early stopping).
      data_dir: a prepared dataset with validation users.
      output: the TOML file to write (its trials table goes beside it).
      budget_minutes: wall time of the whole study, over every invocation.
      study_dir: where the study lives (default: ``<output>.study``).
      space: the space (default :data:`DEFAULT_SPACE`).
      max_trials: stop after this many finished trials too (0: only the budget).
      seed: the sampler's seed.

    Returns:
      A summary: best value, params and trial number, trials finished, seconds used.

    Raises:
      SearchError: a bad space, budget, study directory, or a dataset without validation users;
        the first trial not reaching a validation within the budget.
    """
    import warnings

    import optuna

    from nann_tf.data.dataset import Dataset
    from nann_tf.train.fit import TrainError, train
    from nann_tf.train.validation import metric_name

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    data_dir, output = Path(data_dir), Path(output)
    if not (budget_minutes > 0 and math.isfinite(budget_minutes)):
        raise SearchError(f"{arg('budget_minutes')} must be > 0, got {budget_minutes}")
    if base.train.val_every_steps < 0:
        raise SearchError("the search ranks trials by validation: [train] val_every_steps must "
                          "not be -1")
    ds = Dataset.load(data_dir)
    if len(ds.val) == 0:
        raise SearchError(f"{data_dir}: the dataset has no validation users, which the search "
                          f"ranks trials by: prepare it with {arg('val_users')} N (N > 0)")
    space = space or SearchSpace(DEFAULT_SPACE, base, "the default search space")
    if output.suffix != ".toml":
        raise SearchError(f"{arg('output')} {output}: the best config is a TOML file: give a name "
                          "ending in .toml")
    if not output.parent.is_dir():
        raise SearchError(f"{arg('output')} {output}: its directory does not exist")
    study_dir = Path(study_dir) if study_dir else output.with_suffix(".study")
    study_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(data_dir, base, space)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(study_dir / STUDY_DB).resolve()}"
    study = optuna.create_study(
        study_name="nann-tf", storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2))
    known = study.user_attrs.get("fingerprint")
    if known is None:
        study.set_user_attr("metric", metric_name(base.train, ds))
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("data", str(data_dir.resolve()))
        study.set_user_attr("space", space.to_dict())
        study.set_user_attr("base", base.to_dict())
        # The first trial is the base config itself (the defaults that follow the data), so a
        # search, however short, never returns a configuration worse than what it started from
        # on the validation users.
        study.enqueue_trial(space.base_params(base), skip_if_exists=False)
    elif known != fingerprint:
        raise SearchError(f"{study_dir}: holds a search over another dataset, base config or "
                          f"space ({study.user_attrs.get('data')}); use another "
                          f"{arg('study_dir')} directory or delete this one")
    # Trials an earlier invocation did not finish: killed (still RUNNING in the storage) or
    # interrupted (Ctrl-C: Optuna records them as FAIL, the objective marks them): run again,
    # once, with the same parameters.
    requeued = set(study.user_attrs.get("requeued", []))
    for t in study.get_trials(deepcopy=True):
        killed = t.state == optuna.trial.TrialState.RUNNING
        interrupted = (t.state == optuna.trial.TrialState.FAIL
                       and t.user_attrs.get("interrupted"))
        if (killed or interrupted) and t.number not in requeued:
            if killed:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.params, skip_if_exists=False)
            requeued.add(t.number)
            log.info("trial %d did not finish (the search was stopped): it runs again",
                     t.number)
    study.set_user_attr("requeued", sorted(requeued))

    budget_s = 60.0 * budget_minutes
    used_before = sum(_trial_seconds(t) for t in study.get_trials(deepcopy=False))
    start = clock()
    deadline = start + budget_s - used_before
    trials_dir = study_dir / "trials"

    def objective(trial) -> float:
        overrides = space.suggest(trial)
        cfg = apply_overrides(base, overrides)
        run_dir = trials_dir / f"trial-{trial.number:04d}"
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = clock()
        trial.set_user_attr("seconds", 0.0)
        reported = []

        def on_validation(entry) -> bool:
            reported.append(entry)
            trial.report(entry["value"], len(reported))
            trial.set_user_attr("seconds", clock() - t0)
            return trial.should_prune()

        stop_at = _Deadline(deadline, clock)
        try:
            summary = train(cfg, ds, run_dir, verbose=0, overwrite=True,
                            extra_callbacks=[stop_at], on_validation=on_validation)
        except TrainError as e:
            raise SearchError(f"trial {trial.number} ({overrides}): {e}") from e
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        finally:
            trial.set_user_attr("seconds", clock() - t0)
        if not reported:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise _NoValidation(trial.number, clock() - t0)
        best = max(e["value"] for e in reported)
        trial.set_user_attr("epochs", summary["steps_run_now"] / summary["steps_per_epoch"])
        trial.set_user_attr("best_step", summary.get("best_step"))
        trial.set_user_attr("stopped_early", bool(summary.get("stopped_early")))
        trial.set_user_attr("deadline", bool(stop_at.hit))
        pruned = trial.should_prune() and not summary.get("stopped_early") and not stop_at.hit
        _keep_if_best(study, trial.number, best, run_dir, study_dir)
        if pruned:
            trial.set_user_attr("pruned_value", best)
            raise optuna.TrialPruned()
        return best

    class _Stop:
        def __call__(self, study_, trial_) -> None:
            done = [t for t in study_.get_trials(deepcopy=False)
                    if t.state in (optuna.trial.TrialState.COMPLETE,
                                   optuna.trial.TrialState.PRUNED)]
            if clock() >= deadline or (max_trials and len(done) >= max_trials):
                study_.stop()

    if clock() < deadline and not (max_trials and _finished(study) >= max_trials):
        try:
            study.optimize(objective, callbacks=[_Stop()], catch=(),
                           gc_after_trial=True)
        except _NoValidation as e:
            if not _finished(study):
                raise SearchError(
                    f"{arg('budget_minutes')} {budget_minutes:g}: too small for one trial: trial "
                    f"{e.number} ran {e.seconds / 60:.1f} minutes without reaching its first "
                    f"validation (every {base.train.val_every_steps or 'epoch'} steps); give a "
                    f"larger budget, or validate more often ({arg('set')} "
                    "train.val_every_steps=N)") \
                    from None
            log.info("trial %d reached no validation before the budget ran out", e.number)
    else:
        log.info("the budget is spent (%.1f of %.1f minutes) or the trials are done: writing "
                 "the best of %d finished trials", used_before / 60, budget_minutes,
                 _finished(study))
    return _write_outputs(study, space, base, output, study_dir, clock() - start + used_before)


class _NoValidation(Exception):
    def __init__(self, number: int, seconds: float):
        super().__init__(f"trial {number}: no validation in {seconds:.0f}s")
        self.number, self.seconds = number, seconds


def _finished(study) -> int:
    import optuna

    return sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
               for t in study.get_trials(deepcopy=False))


def _best_value(t) -> float | None:
    import optuna

    if t.state == optuna.trial.TrialState.COMPLETE:
        return t.value
    if t.state == optuna.trial.TrialState.PRUNED:
        return t.user_attrs.get("pruned_value")
    return None


def _keep_if_best(study, number: int, value: float, run_dir: Path, study_dir: Path) -> None:
    """Keeps the trial's model as ``<study>/best-model`` when it beats every earlier trial."""
    earlier = [v for t in study.get_trials(deepcopy=False) if t.number != number
               for v in [_best_value(t)] if v is not None]
    if not earlier or value > max(earlier):
        replace_dir(run_dir, study_dir / BEST_MODEL)
        (study_dir / f"{BEST_MODEL}.trial").write_text(f"{number}\n")
    shutil.rmtree(run_dir, ignore_errors=True)


def trials_table(study, space: SearchSpace) -> str:
    """The trials as a Markdown table, best first."""
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False):
        value = _best_value(t)
        rows.append((value if value is not None else -math.inf, t))
    rows.sort(key=lambda r: (-r[0], r[1].number))
    keys = [p.key for p in space.params]
    head = ["trial", "state", "validation", "epochs", "minutes"] + keys
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for value, t in rows:
        params = space.decode(t.params)
        state = t.state.name.lower()
        if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("deadline"):
            state = "complete (deadline)"
        epochs = t.user_attrs.get("epochs")
        cells = [str(t.number), state,
                 f"{value:.4f}" if math.isfinite(value) else "-",
                 f"{epochs:.1f}" if epochs is not None else "-",
                 f"{_trial_seconds(t) / 60:.1f}"]
        cells += [json.dumps(params[k]) if k in params else "-" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_outputs(study, space: SearchSpace, base: Config, output: Path, study_dir: Path,
                   seconds: float) -> dict:
    scored = [(v, t) for t in study.get_trials(deepcopy=False) for v in [_best_value(t)]
              if v is not None]
    if not scored:
        raise SearchError(f"{study_dir}: no trial finished within the budget; nothing to write")
    value, best = max(scored, key=lambda r: (r[0], -r[1].number))
    params = space.decode(best.params)
    cfg = apply_overrides(base, params)
    metric = study.user_attrs.get("metric", "validation")
    header = (f"Written by nann-tf search-config: trial {best.number} of {len(scored)} scored, "
              f"best validation figure {value:.4f}\n({metric} on the dataset's validation users; "
              f"{seconds / 60:.1f} minutes searched).\nThe study: {study_dir} (the trials: "
              f"{output.with_suffix('.trials.md').name}; the trained model: "
              f"{study_dir / BEST_MODEL}).")
    write_text_atomic(output, cfg.to_toml(header))
    table = trials_table(study, space)
    write_text_atomic(output.with_suffix(".trials.md"), table)
    return {"best_value": value, "best_trial": best.number, "best_params": params,
            "trials_scored": len(scored), "trials": len(study.get_trials(deepcopy=False)),
            "minutes": seconds / 60, "output": str(output), "study": str(study_dir),
            "table": table}
