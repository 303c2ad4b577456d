"""The offline pipeline's stages and their reuse: synth -> prepare -> train -> build-index -> export.

One runner drives the stages for ``nann-tf demo``, the bench scripts and the test fixtures. Each
stage calls the library (never the command line) and writes under one work directory::

    DIR/log.csv            synthetic UserBehavior log          (synth)
    DIR/data/              dataset                             (prepare)
    DIR/model/             trained model                       (train)
    DIR/index/             item embeddings + HNSW levels       (build-index)
    DIR/models/<name>/<v>/ SavedModel versions                 (export)
    DIR/pipeline.json      which stage outputs are up to date (config fingerprints)

Reuse: a stage is skipped when its recorded fingerprint (the config tables it depends on,
chained downstream) matches and its output still loads; a changed ``[model]`` table retrains,
and so on downstream. ``fresh=True`` redoes every stage (the export then adds a new version).
Outputs that the runner did not write are never overwritten without ``fresh``. A stage is
marked as started before it runs, so an interrupted stage's output is the runner's to resume
(training resumes from its backup) or replace.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from nann_tf.config import Config, load_config
from nann_tf.errors import UserError, arg
from nann_tf.fsutil import write_json_atomic

__all__ = ["STAGES", "STATE_FILE", "Pipeline", "PipelineError", "StageLog", "fingerprint"]

STAGES = ("synth", "prepare", "train", "build-index", "export")
STATE_FILE = "pipeline.json"
_STATE_FORMAT = "nann-tf-pipeline"


class PipelineError(UserError, RuntimeError):
    """The work directory holds something the runner cannot reuse or replace."""


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class StageLog:
    """Numbered progress lines, ``[i/total] stage: ...``, with each stage's time and the total
    since the log was made (the pipeline's stages, and the demo's after them)."""

    def __init__(self, total: int, say: Callable[[str], None]):
        self.total, self.say = total, say
        self.t0 = time.perf_counter()

    def line(self, i: int, stage: str, text: str) -> None:
        self.say(f"[{i}/{self.total}] {stage}: {text}")

    def start(self, i: int, stage: str, what: str) -> float:
        self.line(i, stage, what)
        return time.perf_counter()

    def done(self, i: int, stage: str, t: float, how: str) -> float:
        """Prints ``how in S s (total T s)``; returns the stage's seconds since ``t``."""
        seconds = time.perf_counter() - t
        self.line(i, stage, f"{how} in {seconds:.1f} s (total "
                            f"{time.perf_counter() - self.t0:.1f} s)")
        return seconds


class _State:
    """``DIR/pipeline.json``: the key and details of every finished stage (written atomically)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"format": _STATE_FORMAT, "stages": {}}
        if path.exists():
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise PipelineError(f"{path}: unreadable pipeline state ({e}); delete it or use "
                                    "another work directory") from e
            if not isinstance(raw, dict) or raw.get("format") != _STATE_FORMAT:
                raise PipelineError(f"{path}: not a nann-tf pipeline state file")
            self.data = raw

    def get(self, stage: str) -> dict | None:
        return self.data["stages"].get(stage)

    def set(self, stage: str, entry: dict) -> None:
        self.data["stages"][stage] = entry
        write_json_atomic(self.path, self.data)


class Pipeline:
    """The stages of one configuration in one work directory.

    Args:
      workdir: the work directory (created).
      config: a config name, a ``.toml`` path, or a :class:`~nann_tf.config.Config`.
      overrides: ``{"section.key": value}`` applied to a named config (as ``--set``).
      model_name: the served model's name (``DIR/models/<name>``).
      fresh: redo every stage.
      say: where progress lines go (default: print).
      export_options: more keyword arguments of
        :func:`~nann_tf.export.export.export_version` (e.g. ``visited="tf"``).
    """

    def __init__(self, workdir, config: str | Path | Config = "ci-synth", *,
                 overrides: dict | None = None, model_name: str = "nann", fresh: bool = False,
                 say: Callable[[str], None] | None = None, export_options: dict | None = None):
        self.cfg = config if isinstance(config, Config) else load_config(config, overrides)
        # A named config trains with the data rules filling the keys it does not give (as
        # `nann-tf train` does); a Config object is used as it is.
        self._source = None if isinstance(config, Config) else (config, dict(overrides or {}))
        self.workdir = Path(workdir).resolve()
        if self.workdir.exists() and not self.workdir.is_dir():
            raise PipelineError(f"{self.workdir}: exists and is not a directory")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model_name = model_name
        self.fresh = fresh
        self.say = say or (lambda msg: print(msg, flush=True))
        self.export_options = dict(export_options or {})
        w = self.workdir
        self.paths = {"log": w / "log.csv", "data": w / "data", "model": w / "model",
                      "index": w / "index", "models": w / "models" / model_name}
        self._state = _State(w / STATE_FILE)
        self.report: dict[str, dict] = {}

    # ----------------------------------------------------------------- fingerprints
    def stage_keys(self) -> dict[str, str]:
        """A key per stage from the config parts it depends on (chained downstream)."""
        d = self.cfg.to_dict()
        data = d["data"]
        keys = {"synth": fingerprint("synth", {k: v for k, v in data.items()
                                               if k.startswith("synth_")})}
        keys["prepare"] = fingerprint(keys["synth"], {k: v for k, v in data.items()
                                                      if not k.startswith("synth_")})
        keys["train"] = fingerprint(keys["prepare"], d["model"], d["train"])
        keys["build-index"] = fingerprint(keys["train"], d["index"])
        keys["export"] = fingerprint(keys["build-index"], d["search"], self.model_name,
                                     self.export_options)
        return keys

    def output(self, stage: str) -> Path:
        return {"synth": self.paths["log"], "prepare": self.paths["data"],
                "train": self.paths["model"], "build-index": self.paths["index"],
                "export": self.paths["models"]}[stage]

    def _output_valid(self, stage: str, entry: dict) -> bool:
        """Whether a stage's recorded output is still there and loads."""
        p = self.paths
        try:
            if stage == "synth":
                return p["log"].is_file() and p["log"].stat().st_size > 0
            if stage == "prepare":
                from nann_tf.data.dataset import Dataset

                Dataset.load(p["data"])
                return True
            if stage == "train":
                from nann_tf.model.saved import MODEL_META, is_trained_model_dir

                meta = json.loads((p["model"] / MODEL_META).read_text())
                return is_trained_model_dir(p["model"]) and "num_items" in meta
            if stage == "build-index":
                from nann_tf.index.store import load_index

                load_index(p["index"])
                return True
            if stage == "export":
                from nann_tf.export.export import EXPORT_INFO

                vdir = p["models"] / str(entry["version"])
                info = json.loads((vdir / EXPORT_INFO).read_text())
                return (vdir / "saved_model.pb").is_file() and \
                    info.get("format") == "nann-tf-export" and \
                    info.get("version") == entry["version"]
        except Exception:  # noqa: BLE001 - anything unreadable means "redo the stage"
            return False
        return False

    # ----------------------------------------------------------------- the stages
    def _run_stage(self, stage: str) -> dict:
        p, cfg, dc = self.paths, self.cfg, self.cfg.data
        if stage == "synth":
            from nann_tf.data.synth import generate_log, write_userbehavior_csv

            cols = generate_log(dc.synth_users, dc.synth_items, dc.synth_categories,
                                dc.synth_events_per_user, dc.synth_seed)
            return {"rows": int(write_userbehavior_csv(cols, p["log"]))}
        if stage == "prepare":
            from nann_tf.data.prepare import prepare_dataset

            meta = prepare_dataset(p["log"], p["data"], "userbehavior", max_len=dc.max_len,
                                   min_len=dc.min_len, val_users=dc.val_users,
                                   test_users=dc.test_users, seed=dc.split_seed,
                                   overwrite=True, train_min_len=dc.train_min_len or None)
            return {"num_items": int(meta["num_items"])}
        if stage == "train":
            from nann_tf.train import train

            if self._source is not None:
                from nann_tf.autoconfig import load_config_for_data

                cfg = load_config_for_data(self._source[0], p["data"], self._source[1])
            summary = train(cfg, p["data"], p["model"], overwrite=True)
            return {"examples_per_s": float(summary["examples_per_s"])}
        if stage == "build-index":
            from nann_tf.index.build import build_index

            info = build_index(p["model"], p["data"], p["index"])
            return {"nodes_per_level": info["nodes_per_level"]}
        from nann_tf.export.export import export_version

        info = export_version(p["model"], p["index"], p["models"], data_dir=str(p["data"]),
                              model_name=self.model_name, **self.export_options)
        return {"version": int(info["version"]),
                "coverage": float(info["validation"]["coverage_vs_brute_force"])}

    def run(self, until: str = "export", *, log: StageLog | None = None) -> dict[str, dict]:
        """Runs (or reuses) every stage up to and including ``until``.

        Args:
          until: the last stage (one of :data:`STAGES`).
          log: where the progress lines go (default: a :class:`StageLog` numbering the stages
            run, printed with ``say``).

        Returns:
          Per stage: ``status`` ("ran" or "reused"), ``seconds`` and the stage's details
          (``version`` and validation ``coverage`` for the export).

        Raises:
          PipelineError: an output exists that the runner did not write (without ``fresh``);
          any stage's own error (a UserError naming the input).
        """
        if until not in STAGES:
            raise ValueError(f"until must be one of {STAGES}, got {until!r}")
        stages = STAGES[:STAGES.index(until) + 1]
        log = log or StageLog(len(stages), self.say)
        keys = self.stage_keys()
        redo = self.fresh
        for i, stage in enumerate(stages, start=1):
            entry = self._state.get(stage)
            out = self.output(stage)
            if not redo and entry and entry.get("key") == keys[stage] and \
                    self._output_valid(stage, entry):
                detail = f" (version {entry['version']})" if stage == "export" else ""
                log.line(i, stage, f"reusing {out}{detail}")
                self.report[stage] = {**{k: v for k, v in entry.items()
                                         if k not in ("key", "status", "started_key")},
                                      "status": "reused", "seconds": 0.0}
                continue
            if out.exists() and entry is None and not self.fresh and stage != "export":
                raise PipelineError(f"{out} exists but was not written by this pipeline in "
                                    f"{self.workdir}; use an empty work directory, or "
                                    f"{arg('fresh')} (start over) to replace it")
            redo = True  # everything downstream of a redone stage is redone too
            if stage == "train" and (self.fresh or (entry or {}).get("started_key") not in
                                     (None, keys[stage])):
                # An interrupted run of another config (or fresh): start over, don't resume.
                from nann_tf.train import remove_training_state

                remove_training_state(self.paths["model"])
            self._state.set(stage, {"key": None, "status": "started",
                                    "started_key": keys[stage]})
            t = log.start(i, stage, self._describe(stage))
            details = self._run_stage(stage)
            extra = (f" (version {details['version']}, validation coverage "
                     f"{details['coverage']:.3f})" if stage == "export" else "")
            seconds = log.done(i, stage, t, f"done{extra}")
            self._state.set(stage, {"key": keys[stage], "status": "done", "seconds": seconds,
                                    **details})
            self.report[stage] = {"status": "ran", "seconds": seconds, **details}
        return self.report

    def _describe(self, stage: str) -> str:
        p = self.paths
        return {"synth": f"synthetic log -> {p['log']}",
                "prepare": f"dataset -> {p['data']}",
                "train": f"training the {self.cfg.model.variant} model (NCE + FGSM) -> "
                         f"{p['model']}",
                "build-index": f"item embeddings + HNSW -> {p['index']}",
                "export": f"SavedModel version -> {p['models']}/<version>"}[stage]
