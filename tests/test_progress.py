"""Tests of the progress reporter (nann_tf.progress) on a fake terminal and off a terminal."""

from __future__ import annotations

import io
import logging

import pytest

from nann_tf.progress import Progress, format_count, format_duration


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("NANN_TF_PROGRESS", raising=False)


def test_formatting():
    assert format_count(999) == "999"
    assert format_count(12_345) == "12,345"
    assert format_count(250_000) == "250k"
    assert format_count(12_345_678) == "12.3M"
    assert format_count(4.2e9) == "4.2G"
    assert format_duration(42) == "42s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3725) == "1h02m"


def test_terminal_line_has_count_rate_and_eta():
    clock, term = FakeClock(), FakeTerminal()
    bar = Progress(1000, "prepare: reading", "rows", stream=term, clock=clock)
    assert bar.tty
    clock.advance(2.0)
    bar.update(250)  # 125 rows/s, 750 left -> 6 s
    assert term.getvalue().endswith("prepare: reading: 250/1,000 rows (25%), 125 rows/s, ETA 6s")
    clock.advance(0.1)
    bar.update(10)  # within redraw_s: not redrawn
    assert "260/" not in term.getvalue()
    clock.advance(1.9)
    bar.update(250)  # 510 in 4 s
    text = term.getvalue()
    assert "\r" in text and text.endswith("510/1,000 rows (51%), 128 rows/s, ETA 4s")
    clock.advance(4.0)
    bar.set(1000)
    bar.close()
    last = term.getvalue().split("\r")[-1]
    assert last.rstrip("\n").rstrip() == "prepare: reading: 1,000/1,000 rows (100%), 125 rows/s, in 8s"
    assert term.getvalue().endswith("\n")


def test_terminal_redraw_pads_a_shorter_line():
    clock, term = FakeClock(), FakeTerminal()
    bar = Progress(None, "x", "items", stream=term, clock=clock)
    clock.advance(1.0)
    bar.update(123456)
    clock.advance(100.0)
    bar.update(1)
    long_line, short_line = term.getvalue().split("\r")[1:3]
    assert "elapsed" in long_line and "ETA" not in long_line  # no total: no ETA
    assert len(short_line) >= len(long_line)


def test_off_terminal_a_log_line_every_interval(caplog):
    clock, stream = FakeClock(), io.StringIO()
    bar = Progress(10_000, "build-index: HNSW insertion", "items", stream=stream, clock=clock,
                   log_every_s=10.0)
    assert not bar.tty
    with caplog.at_level(logging.INFO, logger="nann_tf.progress"):
        for _ in range(30):  # 30 s, one update a second
            clock.advance(1.0)
            bar.update(100)
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "nann_tf.progress"]
    assert len(lines) == 4  # at 10, 20 and 30 s, and the final line
    assert lines[0] == ("build-index: HNSW insertion: 1,000/10,000 items (10%), 100 items/s, "
                        "ETA 1m30s")
    assert lines[-1].endswith("3,000/10,000 items (30%), 100 items/s, in 30s")
    assert stream.getvalue() == ""  # logging is configured: nothing on the stream


def test_off_terminal_short_loop_is_silent_and_without_logging_goes_to_the_stream(monkeypatch):
    clock, stream = FakeClock(), io.StringIO()
    with Progress(10, "quick", stream=stream, clock=clock) as bar:
        clock.advance(1.0)
        bar.update(10)
    assert stream.getvalue() == ""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    bar = Progress(10, "slow", "users", stream=stream, clock=clock, log_every_s=5.0)
    clock.advance(6.0)
    bar.update(3)
    assert stream.getvalue() == "slow: 3/10 users (30%), 0.5 users/s, ETA 14s\n"


def test_disabled_by_argument_or_environment(monkeypatch):
    clock, term = FakeClock(), FakeTerminal()
    with Progress(5, "off", stream=term, clock=clock, enabled=False) as bar:
        bar.update(5)
    monkeypatch.setenv("NANN_TF_PROGRESS", "0")
    with Progress(5, "off", stream=term, clock=clock) as bar:
        bar.update(5)
    assert term.getvalue() == ""
    monkeypatch.setenv("NANN_TF_PROGRESS", "log")
    assert not Progress(5, stream=term).tty


def test_training_log_lines_count_steps_of_this_run_with_examples_per_s_and_loss(caplog):
    """Off a terminal, training logs progress (Keras writes one line per epoch only): the steps
    this process runs (a resumed run only those left), across fit() calls, with examples/s and
    the loss; the final line comes with the last step."""
    from nann_tf.train.fit import TrainProgressLog

    clock = FakeClock()
    cb = TrainProgressLog(total_steps=20, batch_size=100, log_every_s=4.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="nann_tf.progress"):
        for fit_call, steps in enumerate((6, 14)):  # a resumed partial epoch, then the rest
            for b in range(steps):
                clock.advance(1.0)
                cb.on_train_batch_end(b, {"loss": float(fit_call * 100 + b)})
            cb.on_train_end()
    lines = [r.getMessage() for r in caplog.records if r.name == "nann_tf.progress"]
    assert [ln.split(",")[0] for ln in lines] == [
        "train: 4/20 steps (20%)", "train: 8/20 steps (40%)", "train: 12/20 steps (60%)",
        "train: 16/20 steps (80%)", "train: 20/20 steps (100%)", "train: 20/20 steps (100%)"]
    assert lines[2] == "train: 12/20 steps (60%), 1 steps/s, ETA 8s, 100 examples/s, loss 105.0000"
    assert lines[-1] == "train: 20/20 steps (100%), 1 steps/s, in 20s, 100 examples/s, loss 113.0000"
