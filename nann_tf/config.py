"""Named configurations (``configs/<name>.toml``) as typed dataclasses.

A config file has one table per stage: ``[data]``, ``[model]``, ``[train]``, ``[index]``,
``[search]`` and ``[similar]``. Every key is optional (the defaults below); an unknown key or a
value of the wrong type is an error that names the file, the table and the key. The ``[search]``
(items-to-user) and ``[similar]`` (items-to-item, embedding mode) tables are
:class:`nann_tf.search.params.SearchParams`, read and checked by that module's rules (the same
ones every command applies to its ``--ef``/``--T`` flags).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tomllib
from pathlib import Path
from typing import Any

from nann_tf.errors import UserError
from nann_tf.search.params import DEFAULT_SIMILAR, SearchParams, SearchParamsError

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "IndexConfig",
    "Config",
    "ConfigError",
    "load_config",
    "parse_overrides",
    "resolve_config_path",
    "CONFIG_DIR",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # shipped as package data


class ConfigError(UserError, ValueError):
    """A configuration file is missing, malformed, or holds a bad value."""


@dataclasses.dataclass
class DataConfig:
    """Dataset preparation and synthetic generation.

    Attributes:
      max_len: L, the number of past behaviours a sample keeps as history.
      min_len: users with fewer behaviours are never held out (and dropped, unless
        ``train_min_len`` keeps them for training).
      train_min_len: users with this many behaviours or more (but fewer than ``min_len``) are
        training users too (0: the same as ``min_len``).
      val_users / test_users: held-out users (scaled down to at most 10% of users each on small
        data).
      synth_users / synth_items / synth_categories / synth_seed: `nann-tf synth` defaults.
    """

    max_len: int = 50
    min_len: int = 10
    train_min_len: int = 2
    val_users: int = 10000
    test_users: int = 10000
    split_seed: int = 0
    synth_users: int = 2000
    synth_items: int = 2000
    synth_categories: int = 50
    synth_events_per_user: int = 40
    synth_seed: int = 0


@dataclasses.dataclass
class ModelConfig:
    """The NANN model.

    Attributes:
      variant: "attention" (NANN: target attention), "sum_pool" (no attention) or "two_tower"
        (inner product of a user and an item embedding).
      item_dim / category_dim: id embedding sizes.
      embedding_dim: d, the size of e_v (the HNSW index dimension).
      item_hidden / user_hidden / score_hidden: MLP hidden layer sizes.
      attention_dim: size of the attention query/key projection.
      dropout: dropout rate on the item embeddings' input and after every hidden layer of the
        item, user and score networks (training only; 0: none).
      dot_term: (attention, sum_pool; two_tower ignores it) add an inner product ``<W [user_vec, pooled], e_v>`` to the
        score network's output: the two-tower score as a term of the deep one.
      position_bias: a learned logit per history position (recency), added to the attention
        logits and weighting the pooled history (instead of a plain mean).
      id_dropout: in training, each item occurrence (candidates and history alike) loses its
        id embedding with this probability (0: never), so e_v also learns from the category
        alone: a regulariser for rare items, and what an item without a trained id gets.
      history_match: (attention; the other variants ignore it) the candidate's largest cosine similarity with a history item
        as an input of the score network and a learned term of the score: whether users come
        back to what they already had is learnt from the data.
    """

    variant: str = "attention"
    item_dim: int = 32
    category_dim: int = 16
    embedding_dim: int = 32
    item_hidden: list[int] = dataclasses.field(default_factory=lambda: [64])
    user_hidden: list[int] = dataclasses.field(default_factory=lambda: [64])
    score_hidden: list[int] = dataclasses.field(default_factory=lambda: [128, 64])
    attention_dim: int = 32
    dropout: float = 0.0
    dot_term: bool = True
    position_bias: bool = True
    history_match: bool = True
    id_dropout: float = 0.0


@dataclasses.dataclass
class TrainConfig:
    """Training with NCE (+ logQ correction) and the FGSM auxiliary loss.

    Attributes:
      num_negatives: K noise samples per positive, from unigram^noise_alpha.
      fgsm_eps: FGSM step on e_v (0, the default, turns the auxiliary loss off: on the 1M
        corpus and MovieLens it changed neither recall nor coverage at the default search, lowered
        coverage of the paper's walk, and costs ~1.7x per step; README "FGSM study"; the
        paper's 3e-5 / 3e-4 are one --set away).
      fgsm_eps_mode: ``absolute`` (the step is ``fgsm_eps``, the paper's parametrisation) or
        ``relative`` (``fgsm_eps`` x the RMS of the batch's e_v coordinates, so a value means
        the same whatever the embeddings' scale).
      fgsm_lambda: weight of the auxiliary KL loss.
      strategy: "default", "mirrored" (one host, all GPUs) or "multi_worker" (TF_CONFIG).
      negatives: "per_example" (K draws for every example; the default: better recall on
        ci-synth, bench/results/train-negatives-ci-synth.json) or "shared" (K draws per batch
        scored against every example of it, the sampled-softmax trick: same logQ correction,
        accidental hits masked; an ~8x faster input pipeline). See nann_tf/train/input.py.
      negative_pool_factor: per-example negatives come from a per-batch pool of ~B*K / f
        noise draws (f = this, an integer >= 1; 1: no pool, B*K draws): each example still gets
        K iid draws from the noise distribution, examples share pool draws. The default 32
        (K=200: blocks of 7 draws) makes the userbehavior-shaped input pipeline ~5-6x faster
        (above 500k examples/s on 2 cores) at no measured recall cost on ci-synth
        (bench/results/train.json "input_pipeline", train-negatives-ci-synth.json); on the
        1M corpus it cost 0.056 recall-all@200 at equal steps for 1.6x the examples/s
        (train-negatives-synth-1m.json), and nothing at equal wall time: 300 s of training each,
        500 test users, paired against unpooled, factor 8 +0.010 [-0.026, +0.044] (2.0x the
        examples), factor 32 +0.002 [-0.036, +0.042] (2.2x) (train-negatives-synth-1m-300s.json),
        so the default stays the fastest. Ignored by shared negatives.
      jit_compile: compile the train step with XLA (the default: 1.08-1.16x examples/s for the
        attention model on 2 CPU cores, bench/results/train.json "xla"). With sparse updates
        the forward and backward pass are the XLA program and the optimizer runs beside it.
      sparse_min_items: from this many items up, the item-id table is updated sparsely: only
        the rows a batch touched (lazy Adam, :mod:`nann_tf.train.optim`; rows not in a batch
        keep their values and moments until their next batch), instead of the whole table and
        both its moment tables every step. Below it the dense update inside the XLA step is
        cheaper (bench/results/train-step-*.json). 0: always sparse.
      backup_every_steps: back up the run (weights and optimizer state) every this many steps
        and at the end of every epoch; an interrupted run resumes from the last backup, mid-epoch
        included, with the data continuing at the step after it. 0: at epoch ends only.
      val_every_steps: validate every this many steps and after the last one
        (:mod:`nann_tf.train.validation`): recall-all@``val_k`` of the next ``val_next_n``
        behaviours of (up to) ``val_users`` validation users, exact over the whole corpus. The
        best weights are the model written; ``patience`` validations without a better figure
        stop training (0: never). 0: once per epoch, at most every 5,000 steps; -1: no
        validation (the last weights are the model, as before validation existed).
      epochs: the most epochs to run (early stopping may stop sooner).
      max_seconds: a time box: training stops at the end of the first step past this many
        seconds (0: no limit), validates once more and writes the best weights validated, as
        at the last step. A resumed run gets a new box.
    """

    batch_size: int = 800
    epochs: int = 1
    steps_per_epoch: int = 0  # 0: one pass over the train samples
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    num_negatives: int = 200
    noise_alpha: float = 0.75
    fgsm_eps: float = 0.0
    fgsm_eps_mode: str = "absolute"
    fgsm_lambda: float = 1.0
    strategy: str = "default"
    negatives: str = "per_example"
    negative_pool_factor: int = 32
    jit_compile: bool = True
    sparse_min_items: int = 100_000
    backup_every_steps: int = 2000
    loss: str = "softmax"
    val_every_steps: int = 0
    val_users: int = 1000
    val_k: int = 100
    val_next_n: int = 10
    patience: int = 3
    max_seconds: float = 0.0
    seed: int = 0


@dataclasses.dataclass
class IndexConfig:
    """HNSW construction (hnswlib, l2). M: links per node; ef_construction: build beam.

    ef_construction = 200 (hnswlib's own default) by default: at the paper's scale (3.9M items)
    the graph built with 40 capped coverage@200 of the beam search at 0.975-0.985 whatever the
    search's beam width; with 200 the same model and search reach 0.997 at the default
    parameters (100 validation users, ``nann-tf tune``), for a build ~2.5x longer. Small
    corpora are fine with less (the CI configs set 40).
    """

    M: int = 32
    ef_construction: int = 200
    num_threads: int = 0  # 0: all cores
    seed: int = 100


@dataclasses.dataclass
class Config:
    name: str = "default"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    search: SearchParams = dataclasses.field(default_factory=SearchParams)
    similar: SearchParams = dataclasses.field(default_factory=lambda: DEFAULT_SIMILAR)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)
               if f.name not in ("name", "search", "similar")}
        return {"name": self.name, **out, "search": self.search.to_dict(),
                "similar": self.similar.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_toml(self, header: str = "") -> str:
        """The whole config as a TOML file that :func:`load_config` reads back to an equal
        config (``header``: comment lines put first)."""
        lines = [f"# {line}" if line else "#" for line in header.splitlines()]
        for section, values in self.to_dict().items():
            if section == "name":
                continue
            lines += ["", f"[{section}]"]
            lines += [f"{key} = {_toml_value(v)}" for key, v in values.items()]
        return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(v: Any) -> str:
    """A TOML literal of a config value (bool, int, float, str, list of ints)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "index": IndexConfig,
    "search": SearchParams,
    "similar": SearchParams,
}


def _check_type(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, int) for v in value)
    elif isinstance(default, dict):
        ok = isinstance(value, dict) and all(isinstance(v, int) for v in value.values())
        value = {str(k): v for k, v in value.items()} if ok else value
    else:  # pragma: no cover
        ok = True
    if not ok:
        raise ConfigError(f"{where}: expected a value like {default!r}, got {value!r}")
    return value


def _validate(cfg: Config, src: str) -> None:
    if cfg.model.variant not in ("attention", "sum_pool", "two_tower"):
        raise ConfigError(
            f"{src}: [model] variant must be attention, sum_pool or two_tower, "
            f"got {cfg.model.variant!r}")
    if cfg.train.strategy not in ("default", "mirrored", "multi_worker"):
        raise ConfigError(
            f"{src}: [train] strategy must be default, mirrored or multi_worker, "
            f"got {cfg.train.strategy!r}")
    for section, key in [("data", "max_len"), ("model", "embedding_dim"), ("train", "batch_size"),
                         ("train", "num_negatives"), ("index", "M")]:
        if getattr(getattr(cfg, section), key) <= 0:
            raise ConfigError(f"{src}: [{section}] {key} must be > 0")
    if cfg.train.fgsm_eps_mode not in ("absolute", "relative"):
        raise ConfigError(f"{src}: [train] fgsm_eps_mode must be absolute or relative, got "
                          f"{cfg.train.fgsm_eps_mode!r}")
    if cfg.train.negatives not in ("shared", "per_example"):
        raise ConfigError(f"{src}: [train] negatives must be shared or per_example, got "
                          f"{cfg.train.negatives!r}")
    if cfg.train.fgsm_eps < 0:
        raise ConfigError(f"{src}: [train] fgsm_eps must be >= 0, got {cfg.train.fgsm_eps}")
    if cfg.train.max_seconds < 0:
        raise ConfigError(f"{src}: [train] max_seconds must be >= 0 (0: no time limit), got "
                          f"{cfg.train.max_seconds}")
    if cfg.train.max_seconds and cfg.train.strategy == "multi_worker":
        raise ConfigError(f"{src}: [train] max_seconds is not supported with strategy = "
                          "multi_worker (each worker's clock would stop it at another step)")
    if cfg.train.sparse_min_items < 0:
        raise ConfigError(f"{src}: [train] sparse_min_items must be >= 0 (0: always sparse), "
                          f"got {cfg.train.sparse_min_items}")
    if cfg.train.backup_every_steps < 0:
        raise ConfigError(f"{src}: [train] backup_every_steps must be >= 0 (0: at epoch ends "
                          f"only), got {cfg.train.backup_every_steps}")
    if cfg.train.loss not in ("nce", "softmax"):
        raise ConfigError(f"{src}: [train] loss must be nce or softmax, got {cfg.train.loss!r}")
    if not 0.0 <= cfg.model.id_dropout < 1.0:
        raise ConfigError(f"{src}: [model] id_dropout must be in [0, 1), got "
                          f"{cfg.model.id_dropout}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"{src}: [model] dropout must be in [0, 1), got {cfg.model.dropout}")
    if cfg.train.val_every_steps < -1:
        raise ConfigError(f"{src}: [train] val_every_steps must be -1 (no validation), 0 (once "
                          f"per epoch, at most every 5,000 steps) or > 0, got "
                          f"{cfg.train.val_every_steps}")
    for key in ("val_users", "val_k", "val_next_n"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"{src}: [train] {key} must be >= 1, got "
                              f"{getattr(cfg.train, key)}")
    if cfg.train.patience < 0:
        raise ConfigError(f"{src}: [train] patience must be >= 0 (0: never stop early), got "
                          f"{cfg.train.patience}")
    if cfg.train.negative_pool_factor < 1:
        raise ConfigError(f"{src}: [train] negative_pool_factor must be >= 1 (1: no pool), got "
                          f"{cfg.train.negative_pool_factor}")


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to an existing file, or the name of a file in ``configs/`` (with or without .toml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / f"{name_or_path}.toml", CONFIG_DIR / str(name_or_path)):
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in CONFIG_DIR.glob("*.toml")) if CONFIG_DIR.is_dir() else []
    raise ConfigError(f"config {str(name_or_path)!r}: no such file and no such name in "
                      f"{CONFIG_DIR} (known: {', '.join(known) or 'none'})")


def config_from_dict(raw: dict[str, Any], src: str = "<dict>", name: str = "custom",
                     strict: bool = True) -> Config:
    """A :class:`Config` from nested dicts; ``strict=False`` skips (and logs) unknown keys, for
    configs saved inside artefacts by an older version."""
    cfg = Config(name=name)
    for section, value in raw.items():
        if section == "name":
            cfg.name = str(value)
            continue
        if section not in _SECTIONS:
            raise ConfigError(f"{src}: unknown table [{section}] (expected one of "
                              f"{', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: [{section}] must be a table")
        if section in ("search", "similar"):
            # One parser and one set of rules for search parameters, wherever they come from.
            known = {k: v for k, v in value.items() if strict or k in SearchParams.FIELDS}
            for key in sorted(set(value) - set(known)):
                logging.getLogger(__name__).warning("%s: ignoring [%s] %s (no longer a "
                                                    "config key)", src, section, key)
            try:
                setattr(cfg, section, SearchParams.from_mapping(
                    known, f"{src}: [{section}]", base=getattr(Config(), section)))
            except SearchParamsError as e:
                raise ConfigError(str(e)) from e
            continue
        obj = getattr(cfg, section)
        fields = {f.name for f in dataclasses.fields(obj)}
        for key, v in value.items():
            if key not in fields and not strict:
                logging.getLogger(__name__).warning("%s: ignoring [%s] %s (no longer a config "
                                                    "key)", src, section, key)
                continue
            if key not in fields:
                raise ConfigError(f"{src}: [{section}] unknown key {key!r} (expected one of "
                                  f"{', '.join(sorted(fields))})")
            setattr(obj, key, _check_type(v, getattr(obj, key), f"{src}: [{section}] {key}"))
    _validate(cfg, src)
    return cfg


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.variant=sum_pool"]`` -> ``{"train.epochs": 3, ...}``: each
    VALUE is read as JSON (numbers, booleans, lists), else kept as a bare string.

    Raises:
      ConfigError: an item that is not ``SECTION.KEY=VALUE`` (the message quotes it).
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"{item!r}: expected SECTION.KEY=VALUE, e.g. train.epochs=3")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value  # a bare string such as two_tower
    return out


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Loads a named config (``configs/<name>.toml``) or a TOML file.

    Args:
      name_or_path: a config name such as ``ci-synth`` or a path to a ``.toml`` file.
      overrides: ``{"train.epochs": 3, ...}`` applied after the file.

    Raises:
      ConfigError: the file is missing or malformed, or a key or value is bad (the message
        names the file, table and key).
    """
    path = resolve_config_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw, str(path), name=path.stem)


def config_from_json(text: str, src: str) -> Config:
    """Reads back what :meth:`Config.to_json` wrote (saved beside checkpoints and indexes)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{src}: not valid JSON: {e}") from e
    name = raw.pop("name", "custom")
    return config_from_dict(raw, src, name=name, strict=False)
