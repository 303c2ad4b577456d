"""Training speed of the step variants, side by side (interleaved) on one dataset.

Usage (repository root):

    python bench/bench_train_step.py --data D --config synth-1m --name synth-1m [--steps 60]

For each variant, a trainer is built on the dataset with the config's model and training
tables, then the variants take turns: ``--rounds`` rounds of ``--steps`` steps each (after
``--warmup`` steps that compile), so that a slower or faster stretch of the machine lands on
every variant alike. Variants:

* ``dense``: Keras's Adam over the whole item table, the per-example negatives gathered from
  the pool in the input pipeline, the score network on the concatenated features (today's
  step before issue 21);
* ``dense+pool``: the item-side tensors (e_v, attention query, e_v's first-layer block) once
  per pool draw, the user block once per example, the dense update (the default below
  ``[train] sparse_min_items``; the whole step one XLA program);
* ``sparse``: lazy Adam on the item table, the rest as ``dense``;
* ``sparse+pool``: both (the default from ``sparse_min_items`` up), and with the forward and
  backward an XLA program of their own: the item network once per distinct item of the batch,
  the batch scored in two groups by history length, the update one op (``NannSparseAdam``);
* ``fgsm-two-tape`` / ``fgsm-one-pass``: ``sparse+pool`` (``dense+pool`` below
  ``sparse_min_items``) with the FGSM auxiliary loss on (``--fgsm-eps``, relative step), its
  direction from a separate inner gradient (the step before issue 21 part 4) or from the loss's
  own backward pass (today's step); compare them with the base variant for FGSM's cost ratio.

Writes ``bench/results/train-step-<name>.json``: examples/s of each round and each variant's
median, and the ratios to ``dense``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


VARIANTS = {"dense": dict(sparse=False, pool=False, concat=True),
            "dense+pool": dict(sparse=False, pool=True, concat=False),
            "sparse": dict(sparse=True, pool=False, concat=True),
            "sparse+pool": dict(sparse=True, pool=True, concat=False),
            "fgsm-two-tape": dict(sparse=None, pool=True, concat=False, fgsm="two-tape"),
            "fgsm-one-pass": dict(sparse=None, pool=True, concat=False, fgsm="one-pass")}


def build(cfg, ds, variant, fgsm_eps=0.1):
    import keras
    import tensorflow as tf

    from nann_tf.model.saved import build_model
    from nann_tf.train.input import InputPipeline, TrainSamples
    from nann_tf.train.noise import NoiseDistribution
    from nann_tf.train.optim import make_optimizer
    from nann_tf.train.step import NANNTrainer

    v = dict(VARIANTS[variant])
    tc = cfg.train
    if v["sparse"] is None:
        v["sparse"] = ds.num_items >= tc.sparse_min_items
    eps, mode = ((fgsm_eps, "relative") if v.get("fgsm") else
                 (tc.fgsm_eps, tc.fgsm_eps_mode))
    keras.utils.set_random_seed(tc.seed)
    noise = NoiseDistribution(ds.item_freq, tc.noise_alpha)
    pipe = InputPipeline(TrainSamples.from_dataset(ds), noise, batch_size=tc.batch_size,
                         num_negatives=tc.num_negatives, negatives=tc.negatives, seed=tc.seed,
                         pool_factor=tc.negative_pool_factor, emit_pool=v["pool"])
    model = build_model(cfg, ds.num_items, ds.num_categories, ds.item_category,
                        max_len=ds.max_len)
    if v["concat"]:
        model.score = model.score_concat  # the paper's concatenated first layer
    trainer = NANNTrainer(model, noise.log_q, tc.num_negatives, eps, tc.fgsm_lambda,
                          fgsm_eps_mode=mode, loss=tc.loss,
                          xla_grads=tc.jit_compile and v["sparse"],
                          fgsm_one_pass=v.get("fgsm") != "two-tape")
    if v["concat"]:  # the step before issue 21: per slot, over L
        trainer.dedup_items = trainer.group_histories = False
    opt = make_optimizer(tc.learning_rate, tc.weight_decay, v["sparse"])
    trainer.compile(optimizer=opt, jit_compile=tc.jit_compile and not v["sparse"])
    trainer({"hist": tf.ones([1, ds.max_len], tf.int32), "items": tf.ones([1, 2], tf.int32)})
    if v["sparse"]:
        opt.sparse_variables(model.sparse_tables())
    it = iter(pipe.dataset())
    trainer.make_train_function()
    return trainer, trainer.train_function, it


def run_steps(fn, it, n):
    out = None
    for _ in range(n):
        out = fn(it)
    float(out["loss"])  # waits for the last step


def main(argv=None) -> int:
    from nann_tf.config import load_config, parse_overrides
    from nann_tf.data.dataset import Dataset
    from nann_tf.fsutil import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--set", action="append", default=[], help="config overrides KEY=VALUE")
    ap.add_argument("--fgsm-eps", type=float, default=0.1,
                    help="the fgsm-* variants' relative FGSM step")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, overrides=parse_overrides(args.set))
    ds = Dataset.load(args.data)
    names = args.variants.split(",")
    built = {}
    for name in names:
        trainer, fn, it = build(cfg, ds, name, args.fgsm_eps)
        t = time.perf_counter()
        run_steps(fn, it, args.warmup)
        print(f"{name}: built, {args.warmup} warm-up steps in {time.perf_counter() - t:.1f}s",
              flush=True)
        built[name] = (trainer, fn, it)
    b = cfg.train.batch_size
    rates = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            _, fn, it = built[name]
            t = time.perf_counter()
            run_steps(fn, it, args.steps)
            rates[name].append(args.steps * b / (time.perf_counter() - t))
            print(f"round {r + 1} {name}: {rates[name][-1]:,.0f} examples/s", flush=True)
    med = {n: float(np.median(v)) for n, v in rates.items()}
    result = {"dataset": str(args.data), "config": args.config, "overrides": args.set,
              "num_items": ds.num_items, "batch_size": b,
              "num_negatives": cfg.train.num_negatives,
              "negative_pool_factor": cfg.train.negative_pool_factor,
              "steps_per_round": args.steps, "rounds": args.rounds,
              "fgsm_eps_relative": args.fgsm_eps,
              "examples_per_s": rates, "median_examples_per_s": med,
              "ratio_to_dense": ({n: med[n] / med["dense"] for n in names}
                                 if "dense" in med else None)}
    out = Path(__file__).resolve().parent / "results" / f"train-step-{args.name}.json"
    write_json_atomic(out, result)
    print(json.dumps(result["median_examples_per_s"]), result["ratio_to_dense"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
