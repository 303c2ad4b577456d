"""Parameter sweeps behind ``nann-tf evaluate --sweep`` (paper Figs. 3, 4, 6, 7a).

:func:`beam_settings` / :func:`hnsw_settings` list the parameter points, :func:`run_curve` turns
each point into one row of metrics (:data:`CURVE_FIELDS`), :func:`run_sweep` runs every figure's
series and writes ``sweep.csv``, ``perturbation.csv`` and the PNGs. Rows are written to and read
back from CSV with :func:`write_csv` / :func:`read_csv`.

Every metric column has its 95% interval beside it (``<metric>_ci95_lo`` / ``_hi``, a bootstrap
over the users shared by every row). The comparison rows (Fig. 4's second model, Fig. 7a's eps
series) also carry the paired difference to the model named in ``vs`` (``diff_<metric>`` with
its paired-bootstrap interval): Fig. 4 against ``--model`` at the same point, Fig. 7a against
the series' eps = 0 model (else ``--model``).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from nann_tf.evaluation.metrics import (METRICS, Bootstrap, paired_difference, per_user_metrics,
                                        scored_fraction, summarize_per_user)
from nann_tf.evaluation.retriever import ModelEntry, Retriever
from nann_tf.fsutil import atomic_path
from nann_tf.search.params import SearchParams, format_level_values

__all__ = ["CURVE_FIELDS", "beam_settings", "diff_fields", "hnsw_settings", "metric_fields",
           "read_csv", "run_curve", "run_sweep", "write_csv"]


def beam_settings(params: SearchParams, scales: Sequence[float] = (0.5, 1.0, 2.0),
                  t0s: Sequence[int] = (1, 2, 3, 5)) -> list[tuple[dict, dict]]:
    """Beam-retrieval points around ``params``: every ``ef`` scaled, times each ``T_0``.

    ``ef_0`` is kept >= ``k`` (a smaller level-0 beam cannot return ``k`` items); the other
    levels' ``T`` stay as in ``params``. Returns ``[(ef, T), ...]`` without duplicates.
    """
    out, seen = [], set()
    for scale in scales:
        if scale <= 0:
            raise ValueError(f"ef scales must be > 0, got {scale}")
        ef = {lv: max(1, int(round(v * scale))) for lv, v in params.ef.items()}
        ef[0] = max(ef[0], params.k)
        for t0 in t0s:
            if params.start_level == 0:
                T = {}
            else:
                if t0 < 1:
                    raise ValueError(f"T_0 values must be >= 1, got {t0}")
                T = {**params.T, 0: int(t0)}
            key = (tuple(sorted(ef.items())), tuple(sorted(T.items())))
            if key not in seen:
                seen.add(key)
                out.append((ef, T))
    return out


def hnsw_settings(params: SearchParams,
                  factors: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 3.0)) -> list[int]:
    """HNSW-retrieval ``ef0`` values: multiples of ``k`` (and the configured ``hnsw_ef``)."""
    values = {max(1, int(round(params.k * f))) for f in factors} | {params.hnsw_ef}
    return sorted(values)


def metric_fields(ms: Sequence[int]) -> list[str]:
    """The metric columns for the M values ``ms``, each followed by its 95% interval."""
    return [f"{name}@{m}{part}" for m in ms for name in METRICS
            for part in ("", "_ci95_lo", "_ci95_hi")]


def diff_fields(ms: Sequence[int]) -> list[str]:
    """The paired-difference columns: ``vs`` and ``diff_<metric>`` with their intervals."""
    return ["vs"] + [f"diff_{f}" for f in metric_fields(ms)]


def _cells(summary: Mapping[str, Any], ms: Sequence[int], prefix: str = "") -> dict:
    """CSV cells of :func:`metric_fields` from a summary with ``_ci95`` pairs."""
    out = {}
    for m in ms:
        for name in METRICS:
            key = f"{name}@{m}"
            if key not in summary:
                continue
            lo, hi = summary.get(f"{key}_ci95", (float("nan"), float("nan")))
            out.update({f"{prefix}{key}": summary[key], f"{prefix}{key}_ci95_lo": lo,
                        f"{prefix}{key}_ci95_hi": hi})
    return out


CURVE_FIELDS = ["figure", "series", "model", "fgsm_eps", "method", "start_level", "ef", "T",
                "hnsw_ef", "k", "users", "items_scored", "scored_fraction", "ms_per_query"]


def run_curve(retriever: Retriever, hist: np.ndarray, target: np.ndarray, bf_ids: np.ndarray,
              ms: Sequence[int], *, method: str, settings: Iterable, k: int,
              base: Mapping[str, Any], progress=None, history_seeds: bool = True,
              bootstrap: Bootstrap | None = None, per_user_out: list | None = None) -> list[dict]:
    """One row of metrics per parameter point.

    Args:
      retriever: the model + index.
      hist / target: the users' histories [U, L] and ground truth [U].
      bf_ids: their brute-force top ids [U, >= max(ms)].
      ms: the M values for the metrics.
      method: ``"beam"`` (settings: ``(ef, T)`` pairs) or ``"hnsw"`` (settings: ``ef0`` ints).
      settings: the points, see ``method``.
      k: results per query.
      base: fixed columns copied into every row (figure, series, model, fgsm_eps).
      progress: optional ``callable(str)`` told about each point.
      history_seeds: beam points seed each query with its history.
      bootstrap: the bootstrap over these users for the ``_ci95`` columns (default: a seeded
        one with 1000 resamples).
      per_user_out: if given, each point's per-user metrics are appended (for paired
        comparisons).

    Returns:
      Rows with the keys :data:`CURVE_FIELDS` + :func:`metric_fields` ``(ms)``.
    """
    boot = bootstrap or Bootstrap(len(hist))
    rows = []
    for point in settings:
        if method == "beam":
            ef, T = point
            res = retriever.beam(hist, ef, T, k, history_seeds)
            cols = {"ef": format_level_values(ef), "T": format_level_values(T), "hnsw_ef": ""}
        elif method == "hnsw":
            res = retriever.hnsw(hist, int(point), k)
            cols = {"ef": "", "T": "", "hnsw_ef": int(point)}
        else:
            raise ValueError(f"method must be 'beam' or 'hnsw', got {method!r}")
        pu = per_user_metrics(res.ids, bf_ids, target, ms)
        if per_user_out is not None:
            per_user_out.append(pu)
        row = dict(base, method=method, start_level=retriever.start_level if method == "beam"
                   else "", k=k, users=len(hist),
                   items_scored=float(np.mean(res.num_scored)),
                   scored_fraction=scored_fraction(res.num_scored, retriever.num_items),
                   ms_per_query=res.ms_per_query, **cols)
        row.update(_cells(summarize_per_user(pu, boot), ms))
        rows.append(row)
        if progress:
            progress(f"{base.get('series', '')} {method} {cols['ef'] or cols['hnsw_ef']} "
                     f"{cols['T']}: scored {row['scored_fraction']:.4f}, coverage@{ms[-1]} "
                     f"{row[f'coverage@{ms[-1]}']:.4f}")
    return rows


# Long on purpose: the figures share the users, the exact answers and the bootstrap; each
# figure is one block below, its maths in the helpers above.
def run_sweep(primary: ModelEntry, ds, params, outdir: str | os.PathLike, *,
              compare: ModelEntry | None = None, eps_models: list[ModelEntry] = (),
              split: str = "test", users: int = 0, ms=(50, 200), visited: str = "tf",
              batch_size: int = 16, scales=(0.5, 1.0, 2.0), t0s=(1, 2, 3, 5),
              hnsw_efs=None, perturb_r: float | None = None, primary_state: dict | None = None,
              compare_state: dict | None = None, resamples: int = 1000, seed: int = 0,
              progress=None) -> dict:
    """Runs the sweeps and writes ``sweep.csv``, ``perturbation.csv`` and the PNGs to ``outdir``.

    Args:
      primary: the model under study (Fig. 3, and the first curve of Figs. 4 and 6).
      ds: the dataset.
      params: checked search parameters (the centre of the sweep, and Fig. 7a's setting).
      outdir: output directory (created; existing files of the same names are replaced).
      compare: optional second model for Fig. 4.
      eps_models: models trained with different eps for Fig. 7a (their ``cfg.train.fgsm_eps``
        is the x axis).
      split / users / ms / visited / batch_size: as in :func:`evaluate_retrieval`.
      scales / t0s: Beam-retrieval points (:func:`~nann_tf.evaluation.sweep.beam_settings`).
      hnsw_efs: HNSW-retrieval ef0 values (default :func:`~nann_tf.evaluation.sweep.hnsw_settings`).
      perturb_r: Fig. 6's perturbation norm (default 0.1 x the median |e_v| of ``primary``).
      primary_state / compare_state: the ``arrays`` of :func:`evaluate_retrieval` for
        ``primary`` / ``compare`` (reused; the primary's bootstrap is used for every row).
      resamples / seed: the bootstrap, when ``primary_state`` brings none.
      progress: optional ``callable(str)``.

    Returns:
      ``{"curves": rows, "perturbation": rows, "perturbation_summary": {...},
      "eps_differences": [{"series", "vs", <paired differences>}], "files": [...]}``.
    """
    from nann_tf.evaluation import plots
    from nann_tf.evaluation.evaluate import held_out
    from nann_tf.evaluation.perturbation import (PERTURBATION_FIELDS, histogram_rows,
                                                 perturbation_deltas)

    say = progress or (lambda msg: None)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    hist, target = held_out(ds, split, users)
    state: dict[str, dict] = {}

    def prepared(entry: ModelEntry) -> dict:
        key = str(Path(entry.model_dir).resolve())
        if key not in state:
            if entry is primary and primary_state is not None:
                state[key] = primary_state
            elif entry is compare and compare_state is not None:
                state[key] = compare_state
            else:
                r = Retriever(entry.model, entry.index, params.start_level, visited, batch_size)
                bf = r.brute_force(hist, max(params.k, max(ms)))
                state[key] = {"retriever": r, "bf_ids": bf.ids}
        return state[key]

    def base(figure: str, entry: ModelEntry, series: str) -> dict:
        return {"figure": figure, "series": series, "model": entry.model_dir,
                "fgsm_eps": entry.eps}

    b_points = beam_settings(params, scales, t0s)
    h_points = hnsw_efs or hnsw_settings(params)
    curves = []
    p_state = prepared(primary)
    boot = p_state.get("bootstrap") or Bootstrap(len(hist), resamples, seed)
    say(f"Fig. 3: {len(b_points)} beam points, {len(h_points)} HNSW points")
    beam_pu: list = []
    beam_rows = run_curve(p_state["retriever"], hist, target, p_state["bf_ids"], ms,
                          method="beam", settings=b_points, k=params.k,
                          base=base("fig3", primary, "beam"), progress=say,
                          history_seeds=params.history_seeds, bootstrap=boot,
                          per_user_out=beam_pu)
    curves += beam_rows
    if params.history_seeds:
        say("Fig. 3: beam without seeds (the paper's algorithm)")
        curves += run_curve(p_state["retriever"], hist, target, p_state["bf_ids"], ms,
                            method="beam", settings=b_points, k=params.k,
                            base=base("fig3", primary, "beam, no seeds"), progress=say,
                            history_seeds=False, bootstrap=boot)
    curves += run_curve(p_state["retriever"], hist, target, p_state["bf_ids"], ms,
                        method="hnsw", settings=h_points, k=params.k,
                        base=base("fig3", primary, "hnsw"), progress=say, bootstrap=boot)
    if compare is not None:
        say("Fig. 4: the comparison model")
        curves += [dict(r, figure="fig4", series=primary.label) for r in beam_rows]
        c_state = prepared(compare)
        compare_pu: list = []
        c_rows = run_curve(c_state["retriever"], hist, target, c_state["bf_ids"], ms,
                           method="beam", settings=b_points, k=params.k,
                           base=base("fig4", compare, compare.label), progress=say,
                           history_seeds=params.history_seeds, bootstrap=boot,
                           per_user_out=compare_pu)
        for row, pu_c, pu_p in zip(c_rows, compare_pu, beam_pu):
            row.update(vs=primary.label,
                       **_cells(paired_difference(pu_c, pu_p, boot), ms, prefix="diff_"))
        curves += c_rows
    eps_rows, eps_pu = [], []
    for entry in eps_models:
        say(f"Fig. 7a: eps={entry.eps:g}")
        st = prepared(entry)
        eps_rows += run_curve(st["retriever"], hist, target, st["bf_ids"], ms, method="beam",
                              settings=[(params.ef, params.T)], k=params.k,
                              base=base("fig7a", entry, f"eps={entry.eps:g}"),
                              history_seeds=params.history_seeds, bootstrap=boot,
                              per_user_out=eps_pu)
    eps_differences = []
    if eps_rows:
        # Paired against the series' eps = 0 model (FGSM off), else against --model.
        ref = next((i for i, e in enumerate(eps_models) if e.eps == 0), None)
        ref_pu = p_state.get("per_user", {}).get("beam") if ref is None else None
        if ref is None and ref_pu is None:
            res = p_state["retriever"].beam(hist, params.ef, params.T, params.k,
                                            params.history_seeds)
            ref_pu = per_user_metrics(res.ids, p_state["bf_ids"], target, ms)
        if ref is None:
            ref_label = primary.label
        else:
            ref_pu, ref_label = eps_pu[ref], eps_rows[ref]["series"]
        for i, (row, pu) in enumerate(zip(eps_rows, eps_pu)):
            if i == ref:
                continue
            diff = paired_difference(pu, ref_pu, boot)
            row.update(vs=ref_label, **_cells(diff, ms, prefix="diff_"))
            eps_differences.append({"series": row["series"], "vs": ref_label, **diff})
        curves += eps_rows

    # Fig. 6: every model given, on its own brute-force top M (M = the largest --at).
    entries = [primary] + ([compare] if compare is not None else []) + list(eps_models)
    seen, deltas, pbase = set(), {}, {}
    if perturb_r is None:
        norms = np.linalg.norm(primary.index.embeddings[1:], axis=1)
        perturb_r = 0.1 * float(np.median(norms))
    m_top = max(ms)
    for entry in entries:
        key = str(Path(entry.model_dir).resolve())
        if key in seen:
            continue
        seen.add(key)
        st = prepared(entry)
        deltas[entry.label] = perturbation_deltas(entry.model, entry.index.embeddings, hist,
                                                  st["bf_ids"][:, :m_top], perturb_r)
        pbase[entry.label] = {"model": entry.model_dir, "fgsm_eps": entry.eps,
                              "radius": perturb_r, "top_m": m_top}
    pert_rows = histogram_rows(deltas, pbase)
    summary = {label: {"mean": float(np.mean(v)), "median": float(np.median(v)),
                       "p90": float(np.quantile(v, 0.9)), "pairs": int(len(v))}
               for label, v in deltas.items()}

    fields = CURVE_FIELDS + metric_fields(ms) + diff_fields(ms)
    files = [write_csv(outdir / "sweep.csv", curves, fields),
             write_csv(outdir / "perturbation.csv", pert_rows, PERTURBATION_FIELDS)]
    files.append(plots.plot_curves([r for r in curves if r["figure"] == "fig3"], ms,
                                   outdir / "fig3_beam_vs_hnsw.png",
                                   "Beam-retrieval vs HNSW-retrieval (Fig. 3)"))
    if compare is not None:
        files.append(plots.plot_curves([r for r in curves if r["figure"] == "fig4"], ms,
                                       outdir / "fig4_fgsm.png",
                                       "Beam-retrieval with vs without FGSM (Fig. 4)"))
    if eps_models:
        files.append(plots.plot_eps([r for r in curves if r["figure"] == "fig7a"], ms,
                                    outdir / "fig7a_eps.png"))
    files.append(plots.plot_perturbation(pert_rows, outdir / "fig6_perturbation.png"))
    return {"curves": curves, "perturbation": pert_rows, "perturbation_summary": summary,
            "perturb_r": perturb_r, "eps_differences": eps_differences,
            "files": [str(f) for f in files]}


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
              fields: Sequence[str]) -> Path:
    """Writes ``rows`` to ``path`` atomically (temp file + rename).

    Raises:
      ValueError: a row has a key that is not in ``fields`` (nothing is written).
    """
    allowed = set(fields)
    for i, row in enumerate(rows):
        extra = sorted(set(row) - allowed)
        if extra:
            raise ValueError(f"{path}: row {i} has keys {extra} that are not columns "
                             f"({', '.join(fields)})")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for row in rows:
            w.writerow({k: _csv_value(row.get(k, "")) for k in fields})
    return path


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Reads a CSV written by :func:`write_csv`; numeric cells come back as int or float."""
    with open(path, newline="") as f:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse_cell(v: str) -> Any:
    if v == "":
        return ""
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v
