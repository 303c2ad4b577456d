"""One search-parameter type: the same per-level string gets the same answer at every entry point.

Entry points: a config file's ``[search]`` table, ``nann-tf evaluate``, ``nann-tf tune``,
``nann-tf export``, ``nann-tf query`` and ``RetrievalClient.retrieve``. Each names the input its
own way (``--ef``, ``ef``, ``<file>: [search] ef``); after that name, the message is identical.
No model, server or dataset is needed: every entry point parses its ``ef`` before it loads or
sends anything, so a good string fails later, on the missing model/server, never on ``ef``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from nann_tf.config import ConfigError, load_config
from nann_tf.search.params import SearchParams, SearchParamsError, parse_level_values
from nann_tf.serving.client import RetrievalClient, ServingError

from conftest import run_cli

GOOD = ["1=100,0=200", " 1=100 , 0=200 ", "0=200,1=100"]
BAD = {
    "1:100,0:200": "expected LEVEL=VALUE pairs with integer levels and values",
    "1=100,1=50,0=200": "level 1 is given twice",
    "-1=5,0=200": "level -1 is negative",
    "1=0,0=200": "the value for level 1 must be >= 1, got 0",
    "1=x,0=200": "expected LEVEL=VALUE pairs",
    "1=100,,0=200": "expected LEVEL=VALUE pairs",
    "100,200": "expected LEVEL=VALUE pairs",
}


def _core(message: str, text: str) -> str | None:
    """What follows ``'<text>': `` on the message's line (None if the text is not named)."""
    m = re.search(re.escape(f"{text!r}: ") + r"(.*)", message)
    return m.group(1).strip() if m else None


def _config(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(f'[search]\nstart_level = 1\nef = "{text}"\nT = "0=4"\nk = 50\n')
    try:
        load_config(path)
    except ConfigError as e:
        return str(e)
    return None


def _cli(capsys, text, *argv):
    """Runs the command with ``--ef=TEXT``; the error if it is about ``--ef`` (it quotes the
    value), else None."""
    rc = run_cli(*argv, f"--ef={text}")
    err = capsys.readouterr().err
    assert rc != 0, "nothing exists at these paths: the command cannot succeed"
    return err if f"--ef {text!r}" in err else None


def _evaluate(capsys, tmp_path, text):
    return _cli(capsys, text, "evaluate", "--model", tmp_path / "m", "--data",
                tmp_path / "d", "--index", tmp_path / "i")


def _tune(capsys, tmp_path, text):
    return _cli(capsys, text, "tune", "--model", tmp_path / "m", "--data", tmp_path / "d",
                "--index", tmp_path / "i")


def _export(capsys, tmp_path, text):
    err = _cli(capsys, text, "export", "--model", tmp_path / "m", "--index",
               tmp_path / "i", "--output", tmp_path / "out")
    assert not (tmp_path / "out").exists(), "a refused export writes nothing"
    return err


def _query(capsys, tmp_path, text):
    return _cli(capsys, text, "query", "--server", "127.0.0.1:1", "--model", "nann",
                "--history", "1,2", "-k", "5", "--T", "0=1", "--timeout", "0.5")


def _client(capsys, tmp_path, text):
    with RetrievalClient("127.0.0.1:1", "nann", timeout_s=0.5, retries=0) as client:
        try:
            client.retrieve(np.ones((1, 2), np.int64), k=5, ef=text, T="0=1")
        except SearchParamsError as e:
            return str(e)
        except ServingError:
            return None  # parsed, then the (absent) server was asked
    raise AssertionError("retrieve against no server returned")


ENTRY_POINTS = {"config": _config, "evaluate": _evaluate, "tune": _tune, "export": _export,
                "query": _query, "client": _client}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("text", GOOD)
def test_good_strings_are_accepted_everywhere(entry, text, tmp_path, capsys):
    fn = ENTRY_POINTS[entry]
    got = fn(tmp_path, text) if entry == "config" else fn(capsys, tmp_path, text)
    assert got is None, f"{entry} refused {text!r}: {got}"


@pytest.mark.parametrize("text", list(BAD))
def test_bad_strings_are_refused_everywhere_with_the_same_message(text, tmp_path, capsys):
    cores = {}
    for entry, fn in ENTRY_POINTS.items():
        msg = fn(tmp_path, text) if entry == "config" else fn(capsys, tmp_path, text)
        assert msg is not None, f"{entry} accepted {text!r}"
        cores[entry] = _core(msg, text)
        assert cores[entry] is not None, f"{entry}'s message does not name {text!r}: {msg}"
    assert len(set(cores.values())) == 1, cores
    assert BAD[text] in cores["config"]


def test_structural_rules_are_the_same_for_config_and_client_side_checks(tmp_path):
    """A missing level, an unused level and k > ef[0]: one message, from one function."""
    cases = {'ef = "0=200"': "ef has no value for level 1",
             'ef = "2=50,1=100,0=200"': "ef gives level 2, which the search does not use",
             'ef = "1=100,0=20"': "k = 50 is larger than ef for level 0 (20)",
             'T = "1=1,0=4"': "T gives level 1, which the search does not use"}
    for line, expected in cases.items():
        key = line.split()[0]
        table = {"ef": 'ef = "1=100,0=200"', "T": 'T = "0=4"'}
        table[key] = line
        path = tmp_path / "c.toml"
        path.write_text(f"[search]\nstart_level = 1\n{table['ef']}\n{table['T']}\nk = 50\n")
        with pytest.raises(ConfigError) as from_config:
            load_config(path)
        values = {k: v.split('"')[1] for k, v in table.items()}
        with pytest.raises(SearchParamsError) as direct:
            SearchParams(1, parse_level_values(values["ef"], "ef"),
                         parse_level_values(values["T"], "T"), 50).checked()
        assert expected in str(from_config.value) and expected in str(direct.value)
        assert str(from_config.value).split(": ", 2)[-1] == str(direct.value).split(": ", 1)[-1]


def test_start_level_above_the_index_is_refused_not_lowered():
    p = SearchParams(2, {2: 10, 1: 20, 0: 40}, {1: 1, 0: 2}, 10)
    assert p.checked(2) == p.checked()
    with pytest.raises(SearchParamsError, match="start_level 2 is above the index's top level 1"):
        p.checked(1)


def test_round_trip_through_the_config_dict():
    p = SearchParams(1, {1: 30, 0: 70}, {0: 3}, 20, 99, False).checked()
    assert SearchParams.from_mapping(p.to_dict()) == p
    assert p.to_dict()["ef"] == "1=30,0=70" and p.ef_row() == [70, 30] and p.T_row() == [3, 0]
