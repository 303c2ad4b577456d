"""Error messages name an input the way the caller typed it: the library's parameter name from
Python, the flag from the command line (which maps them; the library never spells a flag)."""

from __future__ import annotations

import sys

import pytest

from nann_tf.errors import UserError, arg, input_names
from nann_tf.index.update import UpdateError, update_index


def _cli():
    from conftest import cli_main

    return cli_main, sys.modules[cli_main.__module__]


def test_arg_names_the_parameter_unless_a_front_end_maps_it():
    assert arg("index_dir") == "index_dir"
    with input_names({"index_dir": "--index"}):
        assert arg("index_dir") == "--index"
        assert arg("version") == "version"  # not mapped: the parameter
        with input_names({"version": "-V"}):
            assert arg("version") == "-V" and arg("index_dir") == "index_dir"
        assert arg("index_dir") == "--index"
    assert arg("index_dir") == "index_dir"


def test_the_cli_maps_library_parameters_to_its_flags():
    _, cli = _cli()
    parser = cli.build_parser()
    export = cli.flag_names(parser, "export")
    assert export["index_dir"] == "--index" and export["model_dir"] == "--model"
    assert export["base_dir"] == "--output" and export["version"] == "--version"
    assert export["similar_ef"] == "--similar-ef" and export["xla"] == "--xla"
    assert export["warmup_batch_sizes"] == "--warmup-batch-sizes"
    # Another command's flag for its parameter (training tells how to prepare the data), but
    # the running command's own flag wins where two commands share a parameter name.
    train = cli.flag_names(parser, "train")
    assert train["val_users"] == "--val-users" and train["warm_start_from"] == "--warm-start"
    assert cli.flag_names(parser, "serve")["version"] == "--version"


def test_a_library_error_names_the_parameter_and_the_cli_the_flag(tmp_path, capsys):
    """The same mistake (an item table to add without its column mapping) from Python and
    from the command line."""
    table = tmp_path / "new.csv"
    table.write_text("item,category\n1,2\n")
    with pytest.raises(UpdateError) as e:
        update_index(tmp_path / "m", tmp_path / "i", tmp_path / "o", add_items=table)
    assert "(add_items FILE columns item=COL,category=COL)" in str(e.value)
    assert "--" not in str(e.value)
    assert isinstance(e.value, UserError)
    main, _ = _cli()
    rc = main(["update-index", "--model", str(tmp_path / "m"), "--index", str(tmp_path / "i"),
               "--output", str(tmp_path / "o"), "--add-items", str(table)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "(--add-items FILE --columns item=COL,category=COL)" in err, err
    assert arg("add_items") == "add_items"  # the mapping ends with the command
    assert not (tmp_path / "o").exists()


def test_a_stage_given_an_object_it_cannot_take_names_what_it_expected():
    """Stages take a directory or the object read from it; anything else (a bare Keras model,
    without the config and metadata an export needs) is a UserError naming what is expected,
    not an AttributeError deep inside."""
    from nann_tf.data.dataset import DataError, as_dataset
    from nann_tf.index.hnsw import HnswIndexError
    from nann_tf.index.store import as_index
    from nann_tf.model.saved import ModelDirError, as_trained_model

    with pytest.raises(ModelDirError, match="a model directory or a TrainedModel.*got object"):
        as_trained_model(object())
    with pytest.raises(DataError, match="a dataset directory or a Dataset, got int"):
        as_dataset(3)
    with pytest.raises(HnswIndexError, match="an index directory or an ItemIndex, got dict"):
        as_index({})
