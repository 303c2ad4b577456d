"""The seed re-add side by side: one model and index, the same test users and parameters, the
beam search as it is and with ``beam._readd`` made a no-op (a seed cut by an upper level then
stays lost, as before the fix); coverage@k against the exact top k, paired interval.

Usage (repository root): python bench/bench_seed_readd.py MODEL INDEX DATA EF T USERS [K]
  e.g. on the CI pipeline's artefacts at start level 2:
  python bench/bench_seed_readd.py M I D "2=2,1=50,0=150" "1=2,0=6" 120 50
Writes bench/results/seed-readd.json.
"""
import json, sys, time
import numpy as np
import nann_tf.search.beam as beam
from nann_tf.data.dataset import Dataset
from nann_tf.evaluation.retriever import Retriever
from nann_tf.index.store import load_index
from nann_tf.model.saved import load_trained_model
from nann_tf.search.brute_force import ExactScorer
from nann_tf.search.params import parse_level_values

model_dir, index_dir, data_dir, ef, T, users = sys.argv[1:7]
users = int(users)
model, cfg, meta = load_trained_model(model_dir)
index = load_index(index_dir)
ds = Dataset.load(data_dir)
hist = ds.test.hist[:users]
if hist.shape[1] > meta["max_len"]:
    hist = hist[:, -meta["max_len"]:]
k = int(sys.argv[7]) if len(sys.argv) > 7 else 200
scorer = ExactScorer(model, index.embeddings, user_batch=64, retired=index.retired)
exact = np.asarray(scorer.topk(hist, k)[0])
ef, T = parse_level_values(ef, "ef"), parse_level_values(T, "T")
s = max(ef)
out = {}
orig = beam._readd
for name in ("readd", "no_readd", "readd_again"):
    beam._readd = orig if name != "no_readd" else (lambda res_ids, res_scores, *a: (res_ids, res_scores))
    r = Retriever(model, index, s, "tf", 16)  # a new trace with this _readd
    t = time.perf_counter()
    res = r.beam(hist, ef, T, k, True)
    per = [len(set(a) & set(b)) / k for a, b in zip(res.ids, exact)]
    out[name] = {"coverage": float(np.mean(per)), "items_scored": float(np.mean(res.num_scored)),
                 "per_user": per}
    print(name, out[name]["coverage"], out[name]["items_scored"], time.perf_counter() - t, flush=True)
d = np.array(out["readd"]["per_user"]) - np.array(out["no_readd"]["per_user"])
rng = np.random.default_rng(0)
boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)]
summary = {"users": users, "k": k, "ef": sys.argv[4], "T": sys.argv[5],
           "coverage_with_readd": out["readd"]["coverage"],
           "coverage_without": out["no_readd"]["coverage"],
           "items_scored_with": out["readd"]["items_scored"],
           "items_scored_without": out["no_readd"]["items_scored"],
           "paired_difference": float(d.mean()),
           "paired_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
           "same_answer_twice": out["readd"]["per_user"] == out["readd_again"]["per_user"]}
summary["command"] = "python bench/bench_seed_readd.py " + " ".join(sys.argv[1:])
print(json.dumps(summary, indent=1))
from pathlib import Path
(Path(__file__).resolve().parent / "results" / "seed-readd.json").write_text(
    json.dumps(summary, indent=1) + "\n")
