"""MovieLens-100K through the Python API: prepare, train, build the index, export a TF Serving
version, then query it in process and over gRPC (and check that both give the same answer).

    python examples/movielens.py --movielens DIR [--workdir W] [--epochs N]

DIR holds ``ml-100k.inter`` and ``ml-100k.item`` (the RecBole layout; the MovieLens-100K
files in ``../shared/data/movielens-100k`` of the development machine). Without ``--movielens``
the example writes a small generated log in that same layout and runs on it (``--stand-in``:
what CI does, where the MovieLens files are not shipped).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

import nann_tf


def write_stand_in(directory: Path, seed: int = 0) -> None:
    """A generated log in the MovieLens-100K layout (ratings 4 or 5, one genre per item)."""
    from nann_tf.data.synth import generate_log

    cols = generate_log(num_users=400, num_items=300, num_categories=12, events_per_user=30,
                        seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    rating = 4 + (np.arange(len(cols["user_id"])) % 2)
    rows = zip(cols["user_id"], cols["item_id"], rating, cols["timestamp"])
    (directory / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    items, first = np.unique(cols["item_id"], return_index=True)
    (directory / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{i}\tItem {i}\t2000\tGenre{c}\n"
                  for i, c in zip(items, cols["category_id"][first])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--movielens", type=Path, help="directory of ml-100k.inter / ml-100k.item")
    ap.add_argument("--workdir", type=Path, help="default: a temporary directory")
    ap.add_argument("--epochs", type=int, default=None,
                    help="cap on training epochs (default: the config's; early stopping ends "
                         "training before it)")
    args = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="nann-example-")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    source = args.movielens
    if source is None:
        source = work / "stand-in"
        write_stand_in(source)
        print(f"no --movielens: a generated stand-in in the MovieLens layout at {source}")

    # 1. Data (the config's [data] sizes), then the config for this dataset: the keys the
    #    movielens-100k config gives, the data rules for the rest (as `nann-tf train` does).
    overrides = {"train.epochs": args.epochs} if args.epochs else {}
    d = nann_tf.load_config("movielens-100k").data
    data = work / "data"
    nann_tf.prepare_dataset(source, data, "movielens", max_len=d.max_len, min_len=d.min_len,
                            val_users=d.val_users, test_users=d.test_users, seed=d.split_seed,
                            overwrite=True)
    ds = nann_tf.Dataset.load(data)
    cfg = nann_tf.load_config_for_data("movielens-100k", ds, overrides)
    print(f"dataset: {ds.num_items} items, {ds.num_train_samples} training samples")

    # 2. Train (validated on the held-out validation users), index, export. Each stage writes
    #    a directory; it takes directories or, as here, the objects already read.
    model_dir, index_dir, base = work / "model", work / "index", work / "models" / "nann"
    summary = nann_tf.train_model(cfg, ds, model_dir, verbose=0, overwrite=True)
    print(f"trained {summary['steps_run_now']} steps")
    trained = nann_tf.load_trained_model(model_dir)  # .model, .cfg, .meta
    shutil.rmtree(index_dir, ignore_errors=True)  # a re-run rebuilds it
    nann_tf.build_index(trained, ds, index_dir)
    info = nann_tf.export_version(trained, nann_tf.load_index(index_dir), base, data_dir=ds)
    version = base / str(info["version"])
    print(f"exported {version} (validation coverage "
          f"{info['validation']['coverage_vs_brute_force']:.3f})")

    # 3. Five test users' histories as raw MovieLens ids (right-aligned, 0 = padding).
    hist = ds.raw_items(ds.test.hist[:5])

    # 4. In process: the version loaded the way TF Serving loads it.
    with nann_tf.SessionModel(version, load_ops=info["visited"] != "tf") as m:
        local = m.run("serving_default", {"hist_item_ids": hist})
    # 5. Over gRPC: the local server (TF Serving's API) and the client.
    server = nann_tf.ModelServer([nann_tf.ServedModelConfig("nann", str(base))],
                                 nann_tf.ServerOptions(host="127.0.0.1", port=0))
    server.start()
    try:
        with nann_tf.RetrievalClient(f"127.0.0.1:{server.port}", "nann") as client:
            client.wait_until_ready(600)
            ids, scores, scored = client.retrieve(hist)
    finally:
        server.stop(2.0)
    same = np.array_equal(ids, local["item_ids"])
    dense = {int(r): i for i, r in enumerate(ds.raw_item_id)}
    genre = ds.raw_category_id[ds.item_category]
    print(f"user 0: history {hist[0][hist[0] != 0][-5:].tolist()} -> top 10 "
          f"{ids[0][:10].tolist()} ({int(scored[0])} items scored), their categories "
          f"{[int(genre[dense[int(i)]]) for i in ids[0][:10]]}")
    print(f"gRPC answer equals the in-process one: {same}")
    tmp.cleanup()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
