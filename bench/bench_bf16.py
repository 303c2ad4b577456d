"""Does bfloat16 pay on this CPU? The training step's dense work in float32 vs bfloat16.

Usage (repository root): python bench/bench_bf16.py [--repeats 30]

The NANN training step at the 1M corpus's shapes (``synth-1m``: batch 512, 100 negatives per
example, d = 64, score network 64-32-1 over ``[user_vec, ctx, e_v, ctx * e_v]``, item network
64 -> 32): the part bfloat16 could speed up is its matrix work, the score network over every
(example, candidate) pair and the item network over every candidate, forward and backward.
This times exactly that part, under Keras's ``float32`` and ``mixed_bfloat16`` policies
(variables float32, compute bfloat16: what ``[train]`` would offer), both XLA-compiled as the
trainer's step is, interleaved, and reports the ratio with a bootstrap interval over the
repeats. The whole step cannot gain more than this part does (the gathers, the attention over
the history, the loss and the optimizer stay as they are). Also: the largest difference of the
scores between the two (what bfloat16's 8-bit mantissa costs).

Writes ``bench/results/bf16.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def build(policy: str, d_in: int, item_in: int):
    import keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        score = keras.Sequential([keras.Input((d_in,)), keras.layers.Dense(64, "relu"),
                                  keras.layers.Dense(32, "relu"), keras.layers.Dense(1)])
        item = keras.Sequential([keras.Input((item_in,)), keras.layers.Dense(64, "relu"),
                                 keras.layers.Dense(32)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return score, item


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--negatives", type=int, default=100)
    args = ap.parse_args(argv)
    import tensorflow as tf

    from nann_tf.evaluation.metrics import Bootstrap
    from nann_tf.fsutil import write_json_atomic

    pairs = args.batch * (1 + args.negatives)
    d, item_in = 32, 64 + 8  # e_v width; item network input: id embedding + category
    rng = np.random.default_rng(0)
    user = tf.constant(rng.normal(size=(args.batch, 64)).astype(np.float32))
    ctx = tf.constant(rng.normal(size=(pairs, d)).astype(np.float32))
    items_in = tf.constant(rng.normal(size=(pairs, item_in)).astype(np.float32))
    nets = {p: build(p, 64 + 3 * d, item_in) for p in ("float32", "mixed_bfloat16")}
    nets["mixed_bfloat16"][0].set_weights(nets["float32"][0].get_weights())
    nets["mixed_bfloat16"][1].set_weights(nets["float32"][1].get_weights())

    def step_fn(score, item):
        @tf.function(jit_compile=True)
        def step():
            with tf.GradientTape() as tape:
                e_v = tf.cast(item(items_in), tf.float32)
                u = tf.repeat(user, 1 + args.negatives, axis=0)
                c = ctx
                x = tf.concat([u, c, e_v, c * e_v], axis=-1)
                s = tf.cast(score(x), tf.float32)[:, 0]
                loss = tf.reduce_mean(tf.nn.softplus(-s))  # float32, as the trainer keeps it
            grads = tape.gradient(loss, score.trainable_variables + item.trainable_variables)
            return s, grads
        return step

    steps = {p: step_fn(*nets[p]) for p in nets}
    for p in steps:
        steps[p]()  # compile
    times = {p: [] for p in steps}
    for _ in range(args.repeats):  # interleaved: the machine's noise hits both alike
        for p in steps:
            t0 = time.perf_counter()
            s, g = steps[p]()
            _ = [x.numpy() for x in g[:1]]
            times[p].append(time.perf_counter() - t0)
    s32 = steps["float32"]()[0].numpy()
    s16 = steps["mixed_bfloat16"]()[0].numpy()
    t32, t16 = np.array(times["float32"]), np.array(times["mixed_bfloat16"])
    ratio = t32 / t16
    boot = Bootstrap(len(ratio), seed=0)
    lo, hi = boot.interval(boot.means(ratio))
    result = {
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "cpu_flags_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text()
        if Path("/proc/cpuinfo").exists() else None,
        "pairs_per_step": pairs, "repeats": args.repeats,
        "ms_float32_median": float(np.median(t32) * 1e3),
        "ms_bfloat16_median": float(np.median(t16) * 1e3),
        "speedup_bf16": float(np.mean(ratio)), "speedup_bf16_ci95": [float(lo), float(hi)],
        "max_abs_score_difference": float(np.max(np.abs(s32 - s16))),
        "score_std": float(np.std(s32)),
        "command": " ".join(["python bench/bench_bf16.py", *sys.argv[1:]]),
    }
    out = Path(__file__).resolve().parent / "results" / "bf16.json"
    write_json_atomic(out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
