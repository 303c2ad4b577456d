"""Training throughput (examples/s) of the NANN model, with and without FGSM.

Usage (from the repository root, after `bash scripts/test.sh` or `pip install -e .`):

    python bench/bench_train.py [--config ci-synth] [--steps 30]

Generates a synthetic log and dataset from the config's [data] table (in a temporary directory),
then times `--steps` training steps after a warm-up for each variant x FGSM on/off. Writes
bench/results/train.json and prints a Markdown table.
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

from nann_tf.config import load_config
from nann_tf.data.dataset import Dataset
from nann_tf.model.saved import build_model
from nann_tf.pipeline import Pipeline
from nann_tf.train import NANNTrainer, NoiseDistribution, batch_generator

import keras


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="ci-synth")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--output", default="bench/results/train.json")
    args = ap.parse_args()
    cfg = load_config(args.config)
    tc = cfg.train
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(tmp, cfg)
        pipeline.run("prepare")
        ds = Dataset.load(pipeline.paths["data"])
        noise = NoiseDistribution(ds.item_freq, tc.noise_alpha)
        rows = []
        for variant in ("attention", "sum_pool", "two_tower"):
            for eps in (tc.fgsm_eps or 3e-5, 0.0):
                cfg.model.variant = variant
                model = build_model(cfg, ds.num_items, ds.num_categories, ds.item_category)
                trainer = NANNTrainer(model, noise.log_q, tc.num_negatives, eps, tc.fgsm_lambda)
                trainer.compile(optimizer=keras.optimizers.Adam(tc.learning_rate))
                gen = batch_generator(ds, noise, tc.batch_size, tc.num_negatives, 0)
                step = tf.function(trainer.train_step)
                batches = [tuple(tf.constant(x) for x in next(gen))
                           for _ in range(args.steps + 3)]
                for b in batches[:3]:
                    step(b)
                t0 = time.perf_counter()
                for b in batches[3:]:
                    step(b)
                sec = time.perf_counter() - t0
                rows.append({"variant": variant, "fgsm_eps": eps, "steps": args.steps,
                             "batch_size": tc.batch_size, "num_negatives": tc.num_negatives,
                             "examples_per_s": args.steps * tc.batch_size / sec,
                             "ms_per_step": 1000 * sec / args.steps})
                print(rows[-1], flush=True)
    result = {"config": args.config, "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "tensorflow": tf.__version__, "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print("\n| variant | FGSM eps | batch | K | examples/s | ms/step |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['fgsm_eps']:g} | {r['batch_size']} | {r['num_negatives']} "
              f"| {r['examples_per_s']:.0f} | {r['ms_per_step']:.1f} |")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
