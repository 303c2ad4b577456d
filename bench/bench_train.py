"""Training throughput and the negatives study: input pipeline, train step (XLA on/off), quality.

Usage (from the repository root, after `bash scripts/test.sh` or `pip install -e .`):

    python bench/bench_train.py --input-only --config userbehavior
    python bench/bench_train.py --xla [--config ci-synth] [--steps 30]
    python bench/bench_train.py --negatives-quality --config ci-synth --seeds 0,1
    python bench/bench_train.py --negatives-quality --config synth-1m --data D --seeds 0 \
        --quality-modes per_example,per_example_pool8,per_example_pool32 --eval-users 500 \
        --train-seconds 480                              # equal wall time
    python bench/bench_train.py [--config ci-synth]        # train step per variant x FGSM

* ``--input-only``: examples/s of the tf.data input pipeline alone (iterated, no model) for
  per-example negatives unpooled (pool factor 1), pooled with the config's
  ``negative_pool_factor`` and every ``--pool-factors``, and shared negatives, interleaved
  (``--repeats`` rounds of ``--round-seconds`` each; medians, and ratios per round to unpooled),
  at the config's batch, K and L, on a synthetic corpus of the paper's shape generated in
  memory (``--items`` 4.2M, ``--users`` 1M, a history of ``--events`` per user on average;
  vectorised numpy, ~10 s). The last line printed is ``input pipeline: <N> examples/s`` for the
  config's default ``negatives`` and ``negative_pool_factor``.
* ``--xla``: train-step examples/s of the attention model with ``jit_compile`` off/on x FGSM
  on/off, on the same pre-made batches, interleaved (``--repeats`` rounds) so that machine
  noise hits every setting alike; ratios are per round.
* ``--negatives-quality``: trains the config with every ``--quality-modes`` (``shared``,
  ``per_example``, ``per_example_pool<f>``; same seeds) and evaluates recall-all with bootstrap
  intervals (``evaluate_brute_force``) and each mode's paired difference to unpooled
  per-example negatives on the same test users.

Results are merged into ``--output`` (default bench/results/train.json, one key per mode;
the quality study writes bench/results/train-negatives-<config>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import keras

from nann_tf.config import load_config
from nann_tf.data.dataset import Dataset
from nann_tf.model.saved import build_model
from nann_tf.pipeline import Pipeline
from nann_tf.train import NANNTrainer, NoiseDistribution
from nann_tf.train.input import NEGATIVE_MODES, InputPipeline, TrainSamples


def _env() -> dict:
    return {"cpu_count": os.cpu_count(), "machine": platform.machine(),
            "tensorflow": tf.__version__, "keras": keras.__version__}


def _merge(path: str, key: str, value: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(p.read_text()) if p.exists() else {}
    if "rows" in old and "step" not in old:  # the first format: one table of train steps
        old = {"step": old}
    old[key] = value
    p.write_text(json.dumps(old, indent=2))


def synthetic_samples(users: int, items: int, events: float, max_len: int,
                      seed: int = 0) -> tuple[TrainSamples, np.ndarray]:
    """A corpus of the paper's shape in memory: ``users`` sequences of >= 10 events (geometric
    lengths, mean ~``events``) over ``items`` items with a Zipf popularity skew. Returns the
    samples and ``freq`` [items + 1]."""
    rng = np.random.default_rng(seed)
    lens = np.maximum(10, rng.geometric(1.0 / events, users)).astype(np.int64)
    total = int(lens.sum())
    splits = np.concatenate([[0], np.cumsum(lens)])
    popular = np.minimum(rng.zipf(1.2, total), items)
    uniform = rng.integers(1, items + 1, total)
    seq = np.where(rng.random(total) < 0.5, popular, uniform).astype(np.int32)
    start = np.repeat(splits[:-1], lens)
    pos = np.arange(total, dtype=np.int64)
    keep = pos != start
    samples = TrainSamples.from_positions(seq, pos[keep], start[keep], max_len)
    freq = np.bincount(seq, minlength=items + 1).astype(np.int64)
    freq[0] = 0
    return samples, freq


def _input_label(mode: str, factor: int) -> str:
    return f"per_example_pool{factor}" if mode == "per_example" and factor > 1 else mode


def bench_input(args, cfg) -> dict:
    tc = cfg.train
    t0 = time.perf_counter()
    samples, freq = synthetic_samples(args.users, args.items, args.events, cfg.data.max_len)
    noise = NoiseDistribution(freq, tc.noise_alpha)
    noise.alias_table()
    gen_s = time.perf_counter() - t0
    print(f"corpus: {args.items} items, {args.users} users, {len(samples.items)} events, "
          f"{len(samples)} samples, L={samples.max_len} (generated in {gen_s:.1f} s)", flush=True)
    factors = sorted({1, tc.negative_pool_factor, *(args.pool_factors or [])})
    settings = [("per_example", f) for f in factors] + [("shared", 1)]
    labels = [_input_label(m, f) for m, f in settings]
    iters = {}
    for (mode, f), label in zip(settings, labels):
        pipe = InputPipeline(samples, noise, batch_size=tc.batch_size,
                             num_negatives=tc.num_negatives, negatives=mode, seed=0,
                             pool_factor=f)
        iters[label] = iter(pipe.dataset())
        for _ in range(20):  # warm-up: first epoch permutation, autotune
            next(iters[label])
    per_round = {k: [] for k in labels}
    for _ in range(args.repeats):  # interleaved: machine noise hits every setting alike
        for label in labels:
            # The same wall time per setting and round (at least 10 batches).
            n, t = 0, time.perf_counter()
            while n < 10 or time.perf_counter() - t < args.round_seconds:
                next(iters[label])
                n += 1
            per_round[label].append(n * tc.batch_size / (time.perf_counter() - t))
    base = per_round["per_example"]
    rows = {}
    for (mode, f), label in zip(settings, labels):
        v = per_round[label]
        rows[label] = {"negatives": mode, "pool_factor": f if mode == "per_example" else None,
                       "examples_per_s_median": float(np.median(v)),
                       "examples_per_s_rounds": [round(x) for x in v],
                       "over_per_example_unpooled": float(np.median(
                           [a / b for a, b in zip(v, base)]))}
    default = _input_label(tc.negatives, tc.negative_pool_factor)
    result = {**_env(), "config": args.config, "batch_size": tc.batch_size,
              "num_negatives": tc.num_negatives, "max_len": samples.max_len,
              "items": args.items, "users": args.users, "samples": len(samples),
              "repeats": args.repeats, "round_seconds": args.round_seconds,
              "default_negatives": tc.negatives,
              "default_pool_factor": tc.negative_pool_factor, "default": default,
              "modes": rows,
              "shared_over_per_example": rows["shared"]["over_per_example_unpooled"]}
    for label, r in rows.items():
        print(f"  {label}: {r['examples_per_s_median']:.0f} examples/s, "
              f"{r['over_per_example_unpooled']:.2f}x unpooled per-example "
              f"(rounds {r['examples_per_s_rounds']})")
    _merge(args.output, "input_pipeline", result)
    print(f"input pipeline: {rows[default]['examples_per_s_median']:.0f} examples/s")
    return result


def _trainer(cfg, ds, noise, eps, jit):
    tc = cfg.train
    model = build_model(cfg, ds.num_items, ds.num_categories, ds.item_category)
    trainer = NANNTrainer(model, noise.log_q, tc.num_negatives, eps, tc.fgsm_lambda,
                          fgsm_eps_mode=tc.fgsm_eps_mode)
    trainer.compile(optimizer=keras.optimizers.Adam(tc.learning_rate), jit_compile=jit)
    return trainer


def bench_xla(args, cfg, ds) -> dict:
    tc = cfg.train
    cfg.model.variant = "attention"
    noise = NoiseDistribution(ds.item_freq, tc.noise_alpha)
    out = {}
    for mode in NEGATIVE_MODES:
        pipe = InputPipeline(TrainSamples.from_dataset(ds), noise, batch_size=tc.batch_size,
                             num_negatives=tc.num_negatives, negatives=mode, seed=0)
        batches = list(pipe.dataset().take(args.steps + 3))
        settings = [(eps, jit) for eps in (tc.fgsm_eps or 3e-4, 0.0) for jit in (False, True)]
        fns = {}
        for eps, jit in settings:
            trainer = _trainer(cfg, ds, noise, eps, jit)
            trainer.make_train_function()
            fn = trainer.train_function
            it = iter(batches[:3])
            for _ in range(3):
                fn(it)  # trace / compile
            fns[(eps, jit)] = fn
        times = {s: [] for s in settings}
        for _ in range(args.repeats):
            for s in settings:
                it = iter(batches[3:])
                t = time.perf_counter()
                for _ in range(args.steps):
                    logs = fns[s](it)
                float(logs["loss"])
                times[s].append(time.perf_counter() - t)
        rows = []
        for eps, jit in settings:
            sec = float(np.median(times[(eps, jit)]))
            ratio = float(np.median([a / b for a, b in zip(times[(eps, False)],
                                                          times[(eps, True)])]))
            rows.append({"fgsm_eps": eps, "jit_compile": jit,
                         "examples_per_s": args.steps * tc.batch_size / sec,
                         "ms_per_step": 1000 * sec / args.steps,
                         "xla_speedup": ratio if jit else None})
            print(mode, rows[-1], flush=True)
        out[mode] = rows
    result = {**_env(), "config": args.config, "variant": "attention", "steps": args.steps,
              "repeats": args.repeats, "batch_size": tc.batch_size,
              "num_negatives": tc.num_negatives, "by_negatives": out}
    _merge(args.output, "xla", result)
    print("\n| negatives | FGSM eps | XLA | examples/s | ms/step | XLA speed-up |\n"
          "|---|---|---|---|---|---|")
    for mode, rows in out.items():
        for r in rows:
            sp = f"{r['xla_speedup']:.2f}x" if r["xla_speedup"] else ""
            print(f"| {mode} | {r['fgsm_eps']:g} | {'on' if r['jit_compile'] else 'off'} | "
                  f"{r['examples_per_s']:.0f} | {r['ms_per_step']:.1f} | {sp} |")
    return result


def bench_steps(args, cfg, ds) -> dict:
    tc = cfg.train
    noise = NoiseDistribution(ds.item_freq, tc.noise_alpha)
    pipe = InputPipeline(TrainSamples.from_dataset(ds), noise, batch_size=tc.batch_size,
                         num_negatives=tc.num_negatives, negatives=tc.negatives, seed=0)
    batches = list(pipe.dataset().take(args.steps + 3))
    rows = []
    for variant in ("attention", "sum_pool", "two_tower"):
        for eps in (tc.fgsm_eps or 3e-4, 0.0):
            cfg.model.variant = variant
            trainer = _trainer(cfg, ds, noise, eps, tc.jit_compile)
            trainer.make_train_function()
            fn = trainer.train_function
            it = iter(batches)
            for _ in range(3):
                fn(it)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                logs = fn(it)
            float(logs["loss"])
            sec = time.perf_counter() - t0
            rows.append({"variant": variant, "fgsm_eps": eps, "steps": args.steps,
                         "batch_size": tc.batch_size, "num_negatives": tc.num_negatives,
                         "negatives": tc.negatives, "jit_compile": tc.jit_compile,
                         "examples_per_s": args.steps * tc.batch_size / sec,
                         "ms_per_step": 1000 * sec / args.steps})
            print(rows[-1], flush=True)
    result = {**_env(), "config": args.config, "rows": rows}
    _merge(args.output, "step", result)
    print("\n| variant | FGSM eps | batch | K | examples/s | ms/step |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['fgsm_eps']:g} | {r['batch_size']} | {r['num_negatives']} "
              f"| {r['examples_per_s']:.0f} | {r['ms_per_step']:.1f} |")
    return result


def _parse_mode(label: str) -> tuple[str, int]:
    """``shared``, ``per_example`` or ``per_example_pool<f>`` -> ``(negatives, pool factor)``."""
    if label.startswith("per_example_pool"):
        return "per_example", int(label[len("per_example_pool"):])
    if label not in NEGATIVE_MODES:
        raise SystemExit(f"unknown negatives mode {label!r}")
    return label, 1


def bench_quality(args, cfg, data_dir: Path, workdir: Path) -> dict:
    """Every mode of ``--quality-modes`` trained with the same seeds and evaluated on the same
    test users; each mode's paired difference to unpooled per-example negatives."""
    from nann_tf.evaluation.evaluate import evaluate_brute_force
    from nann_tf.evaluation.metrics import paired_difference
    from nann_tf.model.saved import load_trained_model
    from nann_tf.train import train

    ds = Dataset.load(data_dir)
    modes = args.quality_modes
    if "per_example" not in modes:
        modes = ["per_example"] + modes
    runs, per_user = [], {}
    for seed in args.seeds:
        for label in modes:
            mode, factor = _parse_mode(label)
            cfg.train.negatives, cfg.train.negative_pool_factor = mode, factor
            cfg.train.seed = seed
            if args.train_seconds:  # equal wall time: every mode gets the same time box,
                cfg.train.max_seconds = args.train_seconds  # all of it training (validation
                cfg.train.epochs = max(cfg.train.epochs, 1000)  # would take a share of it
                cfg.train.val_every_steps = -1                  # that depends on the speed)
            out = workdir / f"model-{label}-{seed}"
            summary = train(cfg, data_dir, out, verbose=0, overwrite=True)
            model, _, _ = load_trained_model(out)
            pu = {}
            res = evaluate_brute_force(model, ds, "test", args.eval_users, (50, 200),
                                       per_user_out=pu)
            per_user[(label, seed)] = pu
            runs.append({"negatives": label, "negatives_mode": mode, "pool_factor": factor,
                         "seed": seed, "train_seconds": summary["seconds"],
                         "train_steps": summary["steps_run_now"],
                         "time_box_reached": summary.get("time_box_reached"),
                         "train_examples_per_s": summary["examples_per_s"],
                         "final_loss": summary["final"], "test": res})
            print(label, seed, f"{summary['examples_per_s']:.0f} ex/s",
                  {k: round(v, 4) for k, v in res["model"].items() if isinstance(v, float)},
                  flush=True)
    # Paired over users and seeds: <mode> - per_example (unpooled).
    boot = per_user[("per_example", args.seeds[0])]["bootstrap"]
    metrics = ("recall_all@50", "recall_all@200")

    def seed_mean(label, m):
        return np.mean([per_user[(label, s)]["model"][m] for s in args.seeds], axis=0)

    means = {label: {m: float(np.mean(seed_mean(label, m))) for m in metrics} for label in modes}
    diffs = {}
    for label in modes:
        if label == "per_example":
            continue
        d = {}
        for m in metrics:
            d.update(paired_difference({m: seed_mean(label, m)}, {m: seed_mean("per_example", m)},
                                       boot))
        diffs[f"{label}_minus_per_example"] = d
    result = {**_env(), "config": args.config, "seeds": args.seeds, "modes": modes,
              "train_seconds_each": args.train_seconds or None,
              "test_users": int(len(seed_mean("per_example", metrics[0]))),
              "seed_mean": means, "runs": runs, **diffs}
    suffix = f"-{args.train_seconds:g}s" if args.train_seconds else ""
    path = Path(args.output).parent / f"train-negatives-{args.config}{suffix}.json"
    path.write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps({"seed_mean": means, **diffs}, indent=2, default=float))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="ci-synth")
    ap.add_argument("--input-only", action="store_true")
    ap.add_argument("--xla", action="store_true")
    ap.add_argument("--negatives-quality", action="store_true")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--round-seconds", type=float, default=2.0,
                    help="--input-only: seconds per setting and round")
    ap.add_argument("--pool-factors", type=lambda s: [int(x) for x in s.split(",")],
                    help="--input-only: per-example pool factors to measure besides 1 and the "
                         "config's")
    ap.add_argument("--items", type=int, default=4_200_000)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--events", type=float, default=30.0)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    ap.add_argument("--quality-modes", type=lambda s: s.split(","),
                    default=["shared", "per_example", "per_example_pool16"],
                    help="--negatives-quality: shared, per_example, per_example_pool<f>, ...")
    ap.add_argument("--train-seconds", type=float, default=0.0,
                    help="--negatives-quality: train every mode for this many seconds of wall "
                         "time ([train] max_seconds) instead of the config's steps; the results "
                         "file is train-negatives-<config>-<S>s.json")
    ap.add_argument("--eval-users", type=int, default=0,
                    help="--negatives-quality: test users to evaluate (0: all)")
    ap.add_argument("--data", help="a prepared dataset directory (default: generate the "
                                   "config's synthetic data in a temporary directory)")
    ap.add_argument("--output", default="bench/results/train.json")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if args.input_only:
        bench_input(args, cfg)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            data_dir = Path(args.data)
        else:
            pipeline = Pipeline(tmp, cfg)
            pipeline.run("prepare")
            data_dir = pipeline.paths["data"]
        if args.negatives_quality:
            bench_quality(args, cfg, data_dir, Path(tmp))
        elif args.xla:
            bench_xla(args, cfg, Dataset.load(data_dir))
        else:
            bench_steps(args, cfg, Dataset.load(data_dir))


if __name__ == "__main__":
    main()
