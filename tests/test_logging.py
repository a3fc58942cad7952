"""metrics.jsonl written by MetricLogger and read back as columns by read_metrics."""

import numpy as np
import pytest

from personvit_jax.training.logging import MetricLogger, read_metrics


def _log(workdir, rows):
    logger = MetricLogger(str(workdir), total_steps=100, images_per_step=8)
    for step, split, metrics in rows:
        logger.write(step, metrics, prefix=split)
    logger.close()


def test_columns_per_split_sorted_with_missing_keys_as_nan(tmp_path):
    _log(tmp_path, [(2, "train", {"loss": 3.0, "lr": 0.1}), (4, "train", {"loss": 2.0}),
                    (4, "eval", {"mAP": 0.25, "rank1": 0.5}), (6, "train", {"loss": 1.5,
                                                                             "lr": 0.3})])
    m = read_metrics(str(tmp_path))  # the workdir, or the file itself
    assert sorted(m) == ["eval", "train"]
    np.testing.assert_array_equal(m["train"]["step"], [2, 4, 6])
    np.testing.assert_array_equal(m["train"]["loss"], [3.0, 2.0, 1.5])
    np.testing.assert_array_equal(m["train"]["lr"], [0.1, np.nan, 0.3])
    assert m["eval"]["mAP"].tolist() == [0.25] and m["eval"]["step"].tolist() == [4]
    assert read_metrics(str(tmp_path / "metrics.jsonl")).keys() == m.keys()


def test_a_resumed_run_replaces_the_steps_it_logged_again(tmp_path):
    """Killed after step 6, resumed from a checkpoint at step 4: steps 6.. are logged again and
    the second run's rows win; an unterminated last line (killed mid-write) is ignored."""
    _log(tmp_path, [(2, "train", {"loss": 3.0}), (4, "train", {"loss": 2.0}),
                    (6, "train", {"loss": 9.0})])
    _log(tmp_path, [(6, "train", {"loss": 1.5}), (8, "train", {"loss": 1.0}),
                    (8, "eval", {"mAP": 0.1}), (8, "eval", {"mAP": 0.2})])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 10, "split": "train", "lo')
    m = read_metrics(str(tmp_path))
    np.testing.assert_array_equal(m["train"]["step"], [2, 4, 6, 8])
    np.testing.assert_array_equal(m["train"]["loss"], [3.0, 2.0, 1.5, 1.0])
    assert m["eval"]["mAP"].tolist() == [0.2]


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl does not exist"):
        read_metrics(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"step": 2, "split": "train", "loss": 1.0}\n'
                                            'not json\n{"step": 4, "split": "train"}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics row"):
        read_metrics(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: .*'split'"):
        read_metrics(str(tmp_path))


def test_library_info_is_dropped_at_the_absl_logger():
    """Notebooks print absl records through Python's root handlers, not absl's: the filter
    must sit on the logger too."""
    import logging

    from absl import logging as absl_logging

    from personvit_jax.training.logging import quiet_library_logs

    quiet_library_logs()
    record = lambda path, level: logging.LogRecord("absl", level, path, 1, "m", None, None)
    logger = absl_logging.get_absl_logger()
    assert not logger.filter(record("/site-packages/orbax/checkpoint/x.py", logging.INFO))
    assert logger.filter(record("/site-packages/orbax/checkpoint/x.py", logging.WARNING))
    assert logger.filter(record("/repo/personvit_jax/stages/finetune.py", logging.INFO))


def test_plot_metrics_draws_the_columns_and_names_what_is_missing(tmp_path):
    from matplotlib.figure import Figure

    from personvit_jax.training.logging import plot_metrics

    _log(tmp_path, [(2, "train", {"loss": 3.0}), (4, "train", {"loss": 2.0}),
                    (4, "eval", {"mAP": 0.25})])
    ax = Figure().subplots()
    plot_metrics(ax, str(tmp_path), "train", ["loss"], title="t")
    (line,) = ax.lines
    assert line.get_xdata().tolist() == [2, 4] and line.get_ydata().tolist() == [3.0, 2.0]
    assert ax.get_title() == "t" and ax.get_legend() is not None
    with pytest.raises(KeyError, match=r"'train' rows have no \['id_loss'\].*'loss'"):
        plot_metrics(ax, str(tmp_path), "train", ["loss", "id_loss"])
    with pytest.raises(KeyError, match=r"no 'monitor' rows.*\['eval', 'train'\]"):
        plot_metrics(ax, str(tmp_path), "monitor", ["mAP"])
