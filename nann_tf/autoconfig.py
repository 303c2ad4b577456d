"""Defaults that follow the data: the configuration a user gets without tuning.

A key a config file (or ``--set``) gives is used as given. Every other key of ``[model]``,
``[train]``, ``[search]`` and ``[similar]`` that :func:`data_rules` covers takes the value its
rule computes from the prepared dataset (items N, training samples S, training users U); keys no
rule covers keep the dataclass defaults. ``--config auto`` (the default of ``nann-tf train`` and
``nann-tf search-config``) is a config with no keys: every rule applies. The values chosen and
the statistics behind them are logged and recorded in the model's ``model.json``
(``"auto_config"``).

The rules, and the evidence behind each (real logs: MovieLens-100K and CiaoDVD in the repository's
shared data, plus MovieLens-latest-small and an Instacart sample; the synthetic corpora at 2k, 1M
and 4.2M items), are in :func:`data_rules` and in the README's "Defaults that follow the data".
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
from pathlib import Path
from typing import Any

from nann_tf.config import Config, ConfigError, config_from_dict, resolve_config_path

__all__ = ["AUTO", "DataStats", "data_rules", "load_config_for_data", "explicit_keys",
           "search_defaults", "tune_search", "TUNE_COVERAGE"]

log = logging.getLogger(__name__)

#: The config name meaning "no file: every rule applies".
AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class DataStats:
    """What the rules look at.

    Attributes:
      num_items: N, items in the corpus.
      num_samples: S, training samples (every position of a training sequence after its first).
      num_users: U, training users.
    """

    num_items: int
    num_samples: int
    num_users: int

    @property
    def samples_per_user(self) -> float:
        return self.num_samples / max(self.num_users, 1)

    @classmethod
    def of(cls, ds) -> "DataStats":
        return cls(int(ds.num_items), int(ds.num_train_samples), int(ds.num_train_users))

    def to_dict(self) -> dict:
        return {"num_items": self.num_items, "num_samples": self.num_samples,
                "num_users": self.num_users,
                "samples_per_user": round(self.samples_per_user, 2)}


def _start_level(num_items: int, M: int) -> int:
    """The beam's start level: level l of an HNSW graph holds about N / M^l nodes; start on the
    highest level that still holds ~50 of them, at most level 2 (the paper's ~N/1000 nodes at
    the 1M-4M scale)."""
    level = 0
    while level < 2 and num_items / float(M) ** (level + 1) >= 50:
        level += 1
    return level


def data_rules(stats: DataStats, M: int = 32) -> dict[str, Any]:
    """``{"section.key": value}`` for the keys that follow the data.

    Args:
      stats: the dataset's statistics.
      M: the HNSW graph's links per node (the search's start level depends on it).
    """
    n, s = stats.num_items, stats.num_samples
    rules: dict[str, Any] = {}
    # Training length: early stopping on validation users ends it; the epoch cap only bounds
    # small data (~3M examples at most), and big data runs one epoch.
    rules["train.epochs"] = int(min(50, max(1, math.ceil(3_000_000 / max(s, 1)))))
    # Batch and negatives: the sizes the project's corpora were measured with -- 256 x 100 on
    # the small real logs and ci-synth, 512 x 100 on the 1M corpus, the paper's 800 x 200 at
    # its 100M-sample scale (a step costs ~B x (K+1) candidates).
    rules["train.batch_size"] = 256 if s < 1_000_000 else 512 if s < 20_000_000 else 800
    rules["train.num_negatives"] = 100 if n < 2_000_000 else 200
    # The search: start level by corpus size, the 1M corpus's beams above it.
    start = _start_level(n, M)
    k = int(min(200, n))
    ef0 = max(400, k)
    ef = {0: ef0}
    T = {0: 4}
    if start >= 1:
        ef[1] = 200
    if start >= 2:
        ef[2] = 100
        T[1] = 2
    ef = {lv: v for lv, v in ef.items() if lv <= start}
    T = {lv: v for lv, v in T.items() if lv < start}
    rules["search.start_level"] = start
    rules["search.ef"] = ",".join(f"{lv}={ef[lv]}" for lv in sorted(ef, reverse=True))
    rules["search.T"] = ",".join(f"{lv}={T[lv]}" for lv in sorted(T, reverse=True))
    rules["search.k"] = k
    return rules


def _raw_config(name_or_path: str | Path) -> tuple[dict, str, str]:
    """``(raw tables, source, name)`` of a config file, or of no file for ``auto``."""
    if str(name_or_path) == AUTO:
        return {}, AUTO, AUTO
    path = resolve_config_path(name_or_path)
    try:
        return tomllib.loads(path.read_text()), str(path), path.stem
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e


def explicit_keys(raw: dict) -> set[str]:
    """The ``section.key`` names a raw config gives."""
    return {f"{section}.{key}" for section, table in raw.items() if isinstance(table, dict)
            for key in table}


def load_config_for_data(name_or_path: str | Path, data, overrides: dict | None = None,
                         ) -> Config:
    """A config for a dataset: the file's keys and ``overrides`` as given, the data rules for
    every other key they cover.

    Args:
      name_or_path: a config name, a ``.toml`` path, or ``auto`` (no file).
      data: a dataset directory or a loaded :class:`~nann_tf.data.dataset.Dataset`.
      overrides: ``{"section.key": value}`` (``--set``), applied last.

    Returns:
      The config; ``config.auto`` holds ``{"stats": ..., "applied": {key: value}}``.

    Raises:
      ConfigError: the file or a value is bad (naming file, table and key).
      DataError: the dataset directory is missing or invalid.
    """
    from nann_tf.data.dataset import Dataset

    ds = data if hasattr(data, "num_items") else Dataset.load(data)
    raw, src, name = _raw_config(name_or_path)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    given = explicit_keys(raw)
    M = raw.get("index", {}).get("M", Config().index.M)
    stats = DataStats.of(ds)
    applied = {}
    for dotted, value in data_rules(stats, M if isinstance(M, int) and M >= 2 else 32).items():
        if dotted in given:
            continue
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
        applied[dotted] = value
    cfg = config_from_dict(raw, src, name=name)
    cfg.auto = {"stats": stats.to_dict(), "applied": applied}
    if applied:
        log.info("defaults that follow the data (%s): %s", ", ".join(
            f"{k} {v}" for k, v in stats.to_dict().items()),
            ", ".join(f"{k}={v}" for k, v in applied.items()))
    return cfg


#: Coverage@k the search parameters are tuned to at ``build-index`` (on validation users).
TUNE_COVERAGE = 0.99


def tune_search(model, index, ds, params, *, target: float = TUNE_COVERAGE,
                users: int = 200, progress=None) -> dict | None:
    """The cheapest beam parameters (ef, T) reaching coverage@k >= ``target`` on validation
    users (:func:`nann_tf.search.tune.tune`: every item scored once, the default grid replayed
    in C++ around ``params``' start level and k, then the wider grid if none of it reaches the
    target, the chosen setting checked with the TensorFlow search), for the index just built.

    Returns:
      ``{"start_level", "k", "ef", "T", "history_seeds", "coverage", "tf_coverage",
      "items_scored", "scored_fraction", "users", "target"}``, or None when the dataset has no
      validation users or no setting of either grid reaches the target (the rules' parameters
      stay).
    """
    import numpy as np

    from nann_tf.search.params import format_level_values
    from nann_tf.search.tune import default_grid, grid_from_lists, tune, wider_grid
    from nann_tf.train.validation import validation_users

    n_users = validation_users(len(ds.val), users, ds.num_items)
    if n_users == 0:
        return None
    s, k = params.start_level, params.k
    num_start = len(index.graph.start_nodes(s))
    grid = grid_from_lists(s, *default_grid(s, k, num_start), k)
    current = (dict(params.ef), dict(params.T))
    if current not in grid:
        grid.append(current)
    wider = [w for w in grid_from_lists(s, *wider_grid(s, k, num_start, index.num_items), k)
             if w not in grid]
    rows = np.arange(len(ds.val))
    if n_users < len(rows):
        rows = np.sort(np.random.default_rng(0).choice(len(rows), n_users, replace=False))
    res = tune(model, index, ds.val.hist[rows], start_level=s, k=k, target=target, grid=grid,
               progress=progress, history_seeds=params.history_seeds, wider=wider)
    chosen = res["chosen"]
    if chosen is None:
        return None
    return {"start_level": s, "k": k, "ef": format_level_values(chosen["ef"]),
            "T": format_level_values(chosen["T"]), "history_seeds": params.history_seeds,
            "coverage": chosen["coverage"], "coverage_low": chosen["coverage_low"],
            "tf_coverage": res["check"]["tf_coverage"],
            "items_scored": chosen["items_scored"],
            "scored_fraction": chosen["scored_fraction"], "users": res["users"],
            "target": target, "widened": res["widened"]}


def search_defaults(cfg: Config, model_meta: dict, index_meta: dict):
    """The search parameters a model serves with by default: the index's tuned ones
    (:func:`tune_search`, at ``build-index``) when the model's ``[search]`` table followed the
    data (a config that gives ``ef`` or ``T`` keeps them), else the config's ``[search]``."""
    tuned = index_meta.get("tuned_search")
    applied = (model_meta.get("auto_config") or {}).get("applied", {})
    if tuned and "search.ef" in applied and tuned.get("start_level") == cfg.search.start_level:
        return cfg.search.overridden(ef=tuned["ef"], T=tuned["T"], k=tuned["k"])
    return cfg.search
