"""``nann-tf search-config``: a model search on your own log, within a wall-time budget.

Trains configurations drawn from a search space (Optuna: TPE, median pruning), each with
validation inside training, ranks them on the dataset's validation users and writes the best
configuration as a TOML file the other commands take, with a table of the trials beside it. The
study is stored in its own directory: the same command run again after an interruption resumes
it. See :mod:`nann_tf.train.model_search`.
"""

from __future__ import annotations

import argparse

from nann_tf.cli import CliError
from nann_tf.cli.train import parse_overrides

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="auto",
                   help="the config to start from (default: auto, the rules that follow the "
                        "data); keys outside the space keep its values")
    p.add_argument("--data", required=True, help="dataset directory from `nann-tf prepare` "
                                                 "(with validation users)")
    p.add_argument("--budget-minutes", type=float, required=True,
                   help="wall time of the whole search, over every invocation of this study")
    p.add_argument("--output", required=True,
                   help="the best config, a .toml file (its trials go to <output>.trials.md)")
    p.add_argument("--study", default=None,
                   help="the study directory (default: <output without .toml>.study); an "
                        "interrupted search there resumes")
    p.add_argument("--space", default=None,
                   help="a TOML file with a [space] table (default: the built-in space, "
                        "nann_tf.train.model_search.DEFAULT_SPACE)")
    p.add_argument("--trials", type=int, default=0,
                   help="also stop after this many finished trials (default 0: the budget only)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a value of the starting config")


def run(args: argparse.Namespace) -> int:
    from nann_tf.config import ConfigError
    from nann_tf.data.dataset import DataError
    from nann_tf.train.model_search import SearchError, load_space, run_search
    from nann_tf.autoconfig import load_config_for_data

    if args.trials < 0:
        raise CliError(f"--trials must be >= 0, got {args.trials}")
    try:
        base = load_config_for_data(args.config, args.data, parse_overrides(args.set))
        space = load_space(args.space, base)
        result = run_search(base, args.data, args.output, budget_minutes=args.budget_minutes,
                            study_dir=args.study, space=space, max_trials=args.trials,
                            seed=args.seed)
    except (ConfigError, DataError, SearchError) as e:
        raise CliError(str(e)) from e
    print(result["table"])
    print(f"best: trial {result['best_trial']}, validation {result['best_value']:.4f}, "
          f"{result['trials_scored']} trials scored in {result['minutes']:.1f} minutes -> "
          f"{result['output']} (study: {result['study']})")
    return 0
