"""THE search parameters: one type, one syntax, one set of rules for every entry point.

The config's ``[search]`` table, ``nann-tf evaluate / tune / export / query`` and the
``retrieve`` client all read per-level values through :func:`parse_level_values` and check a
whole setting with :meth:`SearchParams.checked`, so the same input gets the same answer (and
the same error message) everywhere, and nothing is filled in or lowered without a word.

Per-level values are written ``LEVEL=VALUE,...``, levels from the top down by convention:
``ef = "2=100,1=200,0=400"``, ``T = "1=2,0=4"``. A grid of candidates per level (``nann-tf tune``)
uses the same syntax with ``/`` between the candidates: ``0=200/400/600,1=100/200``.

Rules (:meth:`SearchParams.checked`):

- ``start_level`` S >= 0 and, given an index, at most its top level;
- ``ef`` has exactly the levels S..0, each >= 1; ``T`` exactly the levels S-1..0, each >= 0
  (0 skips a level): a missing level and a level the search would not use are both errors;
- ``k`` >= 1 and ``k <= ef[0]`` (a smaller level-0 beam cannot return k items);
- ``hnsw_ef`` >= 1.

Defaults (T one round more than the paper's on levels 1 and 0, with history seeds) were chosen
on 300 validation users of the 1M synthetic corpus: coverage@200 0.992 there against 0.70 with
the paper's T and no seeds, at the same ~0.55% of the corpus scored
(``bench/results/retrieval-synth-1m.md``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from nann_tf.errors import UserError, arg

__all__ = [
    "DEFAULT_EF",
    "DEFAULT_SIMILAR",
    "DEFAULT_T",
    "SearchParams",
    "similar_for_index",
    "SearchParamsError",
    "format_level_values",
    "level_values",
    "parse_level_grid",
    "parse_level_values",
]

DEFAULT_EF = {2: 100, 1: 200, 0: 400}
DEFAULT_T = {1: 2, 0: 4}  # the paper's {1: 1, 0: 3} stops short on 1M items (module docstring)

_EXAMPLES = {"ef": "2=100,1=200,0=400", "T": "1=2,0=4"}


class SearchParamsError(UserError, ValueError):
    """Bad search parameters; the message names the input and what was expected."""


def _example(name: str) -> str:
    return _EXAMPLES["T" if name.split()[-1].lstrip("-").startswith("T") else "ef"]


def _parse(text: Any, name: str, minimum: int, grid: bool) -> dict[int, Any]:
    if not isinstance(text, str):
        raise SearchParamsError(f"{name} {text!r}: expected a string of LEVEL=VALUE pairs, "
                                f"e.g. {_example(name)}")
    out: dict[int, Any] = {}
    if not text.strip():
        return out  # no levels (T of a search starting on level 0)
    value_form = "V1/V2/..." if grid else "VALUE"
    example = "0=200/400,1=100/200" if grid else _example(name)
    for part in text.split(","):
        level, sep, value = part.strip().partition("=")
        try:
            lv = int(level)
            vals = [int(v) for v in value.split("/")] if grid else [int(value)]
        except ValueError:
            lv, vals = None, []
        if not sep or lv is None:
            raise SearchParamsError(f"{name} {text!r}: expected LEVEL={value_form} pairs with "
                                    f"integer levels and values, e.g. {example}")
        if lv < 0:
            raise SearchParamsError(f"{name} {text!r}: level {lv} is negative (levels are 0, "
                                    "the bottom, and up)")
        if lv in out:
            raise SearchParamsError(f"{name} {text!r}: level {lv} is given twice")
        low = min(vals)
        if low < minimum:
            raise SearchParamsError(f"{name} {text!r}: the value for level {lv} must be >= "
                                    f"{minimum}, got {low}")
        out[lv] = sorted(set(vals)) if grid else vals[0]
    return out


def parse_level_values(text: str, name: str, *, minimum: int = 0) -> dict[int, int]:
    """``"2=100,1=200,0=400"`` -> ``{2: 100, 1: 200, 0: 400}``.

    Args:
      text: comma-separated ``LEVEL=VALUE`` pairs (integers).
      name: the input it came from, named in the error (``"--ef"``, ``"[search] ef"``).
      minimum: the smallest allowed value.

    Raises:
      SearchParamsError: not such a list, a negative or repeated level, or a value < minimum.
    """
    return _parse(text, name, minimum, grid=False)


def parse_level_grid(text: str, name: str, *, minimum: int = 0) -> dict[int, list[int]]:
    """``"1=25/50,0=100/200"`` -> ``{1: [25, 50], 0: [100, 200]}`` (candidates per level).

    Raises:
      SearchParamsError: as :func:`parse_level_values`.
    """
    return _parse(text, name, minimum, grid=True)


def level_values(value: Any, name: str, *, minimum: int = 0) -> dict[int, int]:
    """Per-level values from a ``LEVEL=VALUE`` string or a mapping (a TOML table or saved JSON
    with string keys): a mapping is written out as that string and parsed by the same rules."""
    if isinstance(value, Mapping):
        value = ",".join(f"{lv}={v}" for lv, v in value.items())
    return parse_level_values(value, name, minimum=minimum)


def format_level_values(values: Mapping[int, Any]) -> str:
    """``{2: 100, 0: 400}`` -> ``"2=100,0=400"`` (levels from the top down)."""
    def fmt(v):
        return "/".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    return ",".join(f"{lv}={fmt(values[lv])}" for lv in sorted(values, reverse=True))


def _check_levels(values: Mapping[int, int], name: str, levels: Iterable[int],
                  start_level: int) -> None:
    want = sorted(levels, reverse=True)
    given = format_level_values(values) or "none"
    span = f"levels {want[0]}..0" if want else "no levels"
    for lv in want:
        if lv not in values:
            raise SearchParamsError(f"{name} has no value for level {lv} (start level "
                                    f"{start_level} needs {span}; given {given})")
    extra = sorted((lv for lv in values if lv not in want), reverse=True)
    if extra:
        raise SearchParamsError(f"{name} gives level {extra[0]}, which the search does not use "
                                f"(start level {start_level} needs {span}; given {given})")


@dataclasses.dataclass(frozen=True)
class SearchParams:
    """Beam-retrieval and HNSW-retrieval parameters (the config's ``[search]`` table).

    Attributes:
      start_level: S, the level whose nodes are all scored first.
      ef: beam width per level ``S..0``.
      T: maximum rounds per level ``S-1..0`` (0 skips a level).
      k: results per query.
      hnsw_ef: HNSW-retrieval's level-0 beam ``ef0``.
      history_seeds: each query's history items are extra entry points of its beam search.
    """

    start_level: int = 2
    ef: Mapping[int, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_EF))
    T: Mapping[int, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_T))
    k: int = 200
    hnsw_ef: int = 400
    history_seeds: bool = True

    FIELDS = ("start_level", "ef", "T", "k", "hnsw_ef", "history_seeds")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], source: str = "[search]",
                     base: "SearchParams | None" = None) -> "SearchParams":
        """From a config's ``[search]`` table or saved JSON (checked, see :meth:`checked`).

        ``ef``/``T`` may be ``LEVEL=VALUE`` strings or tables; every key is optional (a missing
        key keeps ``base``'s value, by default the class defaults).

        Raises:
          SearchParamsError: an unknown key, a value of the wrong type, or a rule broken.
        """
        base = cls() if base is None else base
        kw: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in cls.FIELDS:
                raise SearchParamsError(f"{source} unknown key {key!r} (expected one of "
                                        f"{', '.join(cls.FIELDS)})")
            if key in ("ef", "T"):
                kw[key] = level_values(value, f"{source} {key}", minimum=1 if key == "ef" else 0)
            elif key == "history_seeds":
                if not isinstance(value, bool):
                    raise SearchParamsError(f"{source} history_seeds: expected true or false, "
                                            f"got {value!r}")
                kw[key] = value
            else:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise SearchParamsError(f"{source} {key}: expected an integer like "
                                            f"{getattr(base, key)!r}, got {value!r}")
                kw[key] = value
        return dataclasses.replace(base, **kw).checked(source=source)

    def overridden(self, *, start_level: int | None = None, ef: Any = None, T: Any = None,
                   k: int | None = None, hnsw_ef: int | None = None,
                   history_seeds: bool | None = None, prefix: str = "") -> "SearchParams":
        """A copy with the given values replaced (``None``: keep); ``ef``/``T`` may be
        ``LEVEL=VALUE`` strings or mappings, named in errors as the inputs ``<prefix>ef`` /
        ``<prefix>T`` (:func:`nann_tf.errors.arg`: ``--ef`` on the command line). Not checked:
        call :meth:`checked`."""
        changes: dict[str, Any] = {}
        if ef is not None:
            changes["ef"] = level_values(ef, arg(f"{prefix}ef"), minimum=1)
        if T is not None:
            changes["T"] = level_values(T, arg(f"{prefix}T"), minimum=0)
        for key, value in (("start_level", start_level), ("k", k), ("hnsw_ef", hnsw_ef)):
            if value is not None:
                changes[key] = int(value)
        if history_seeds is not None:
            changes["history_seeds"] = bool(history_seeds)
        return dataclasses.replace(self, **changes)

    def replace(self, **changes) -> "SearchParams":
        return dataclasses.replace(self, **changes)

    def checked(self, max_level: int | None = None, *,
                source: str = "search parameters") -> "SearchParams":
        """Validated copy with int keys and values (the module docstring's rules).

        Args:
          max_level: the index's top level (``start_level`` must not exceed it).
          source: named at the start of every error (e.g. the config file's table).

        Raises:
          SearchParamsError: naming the parameter and what was expected.
        """
        s = int(self.start_level)
        if s < 0:
            raise SearchParamsError(f"{source}: start_level must be >= 0, got {s}")
        if max_level is not None and s > max_level:
            raise SearchParamsError(
                f"{source}: start_level {s} is above the index's top level {max_level} (its "
                f"levels are 0..{max_level}); use a start level <= {max_level} with ef for "
                "each level from there down")
        ef = level_values(self.ef, "ef", minimum=1)
        T = level_values(self.T, "T", minimum=0)
        try:
            _check_levels(ef, "ef", range(s + 1), s)
            _check_levels(T, "T", range(s), s)
        except SearchParamsError as e:
            raise SearchParamsError(f"{source}: {e}") from None
        if self.k < 1:
            raise SearchParamsError(f"{source}: k must be >= 1, got {self.k}")
        if self.k > ef[0]:
            raise SearchParamsError(f"{source}: k = {self.k} is larger than ef for level 0 "
                                    f"({ef[0]}); the level-0 beam holds the results, so ef "
                                    "for level 0 must be >= k")
        if self.hnsw_ef < 1:
            raise SearchParamsError(f"{source}: hnsw_ef must be >= 1, got {self.hnsw_ef}")
        return SearchParams(s, dict(sorted(ef.items(), reverse=True)),
                            dict(sorted(T.items(), reverse=True)), int(self.k),
                            int(self.hnsw_ef), bool(self.history_seeds))

    def ef_row(self) -> list[int]:
        """``ef`` as the ``retrieve`` signature takes it: levels 0..S."""
        return [int(self.ef[lv]) for lv in range(self.start_level + 1)]

    def T_row(self) -> list[int]:
        """``T`` as the ``retrieve`` signature takes it: levels 0..S (level S unused: 0)."""
        return [int(self.T[lv]) for lv in range(self.start_level)] + [0]

    def describe(self) -> str:
        return (f"S={self.start_level} ef={format_level_values(self.ef)} "
                f"T={format_level_values(self.T) or '-'} k={self.k}"
                f"{' seeds=history' if self.history_seeds else ''}")

    def to_dict(self) -> dict:
        """JSON/TOML-ready, per-level values as ``LEVEL=VALUE`` strings."""
        return {"start_level": int(self.start_level), "ef": format_level_values(self.ef),
                "T": format_level_values(self.T), "k": int(self.k),
                "hnsw_ef": int(self.hnsw_ef), "history_seeds": bool(self.history_seeds)}


# Defaults of the config's [similar] table: the embedding-mode ``similar_items`` search
# (:mod:`nann_tf.search.similar`). Its seeds are entry points, so the walk starts next to its
# answer: a narrow start level, the level-1 pass skipped and a deeper level-0 walk. On the 1M
# synthetic corpus (500 seed rows of 1, 2 and 3 items): coverage@50 0.9973 +/-0.0018 against the
# exact neighbours, scoring 0.39% of the corpus; ef0 = 100 gave 0.9938 +/-0.0044 at 0.26%
# (``bench/results/similar-synth-1m.json``).
DEFAULT_SIMILAR = SearchParams(start_level=2, ef={2: 16, 1: 16, 0: 200}, T={1: 0, 0: 8}, k=50,
                               hnsw_ef=200, history_seeds=True)


def similar_for_index(params: SearchParams, max_level: int) -> SearchParams:
    """``params`` for an index whose top level is ``max_level``: the built-in
    :data:`DEFAULT_SIMILAR` starts on level 2, so on a smaller index (fewer than 3 levels) it
    starts on the top level with the same beams below; a table written by the user is kept as
    written (and checked, like ``[search]``)."""
    s = int(max_level)
    if params != DEFAULT_SIMILAR or s >= params.start_level:
        return params
    return params.replace(start_level=s, ef={lv: params.ef[lv] for lv in range(s, -1, -1)},
                          T={lv: params.T[lv] for lv in range(s - 1, -1, -1)})
