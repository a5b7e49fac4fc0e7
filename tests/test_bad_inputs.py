"""The bad inputs of issue #14, run through the CLI: each is one `error:` line, exit code 2, and nothing written."""
import pytest
from click.testing import CliRunner

from cirn.cli import export_main, train_main


def assert_one_error_line(result, *words):
    """Exit code 2 and one line on stderr (all-stages may have said on stdout which step it started)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("override, words", [
    ("run.log_every=0", ["run.log_every must be an integer >= 1, got 0"]),  # was a ZeroDivisionError traceback
    ("optim.lr=-1", ["optim.lr must be a number > 0, got -1.0"]),  # was a ValueError traceback from torch.optim.SGD
    ("run.iterations=0", ["run.iterations", ">= 1"]),
    ("optim.momentum=1.5", ["optim.momentum", "[0, 1)"]),
    ("data.target_size_wh=[64,0]", ["data.target_size_wh", "[width, height]"]),
    ("data.target_size=[64,32]", ["data.target_size", "data.target_size_wh"]),  # the old name says the new one
])
def test_bad_training_values_are_one_error_line_and_write_nothing(override, words, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(train_main, ["source-only", "--preset", "smoke", "--out", str(out), override])
    assert_one_error_line(result, *words)
    assert not out.exists()


def test_export_height_zero_is_an_error_not_the_default_size(checkpoint, tmp_path):
    for option, value, words in (("--height", "0", ["--height must be an integer >= 8, got 0"]),
                                 ("--width", "-4", ["--width", ">= 8"]),
                                 ("--calib-images", "0", ["--calib-images", ">= 1"]),
                                 ("--parity-images", "0", ["--parity-images", ">= 1"]),
                                 ("--max-batch", "0", ["--max-batch", ">= 1"])):
        out = tmp_path / option.strip("-")
        result = CliRunner().invoke(export_main, [str(checkpoint), "--out", str(out), option, value])
        assert_one_error_line(result, *words)
        assert not out.exists()


def _missing_root_commands(toy_data, missing, seg_checkpoint):
    """(argv, the root the error names) of every training command given a dataset root that does not exist."""
    source = ["--source-root", str(missing), "--target-root", str(toy_data / "cityscapes")]
    target = ["--source-root", str(toy_data / "gta5"), "--target-root", str(missing)]
    return [
        (["source-only", *source], missing), (["source-only", *target], missing),
        (["oracle", *target], missing), (["stage2", *source], missing), (["stage2", *target], missing),
        (["stage1", "--cir", "fda", *source], missing), (["stage1", "--cir", "fda", *target], missing),
        (["stage1", "--seg-model", str(seg_checkpoint), *source], missing),
        (["stage3", "--model", str(seg_checkpoint), *target], missing),
        (["all-stages", *source], missing), (["all-stages", *target], missing),
    ]


def test_missing_dataset_root_names_it_and_leaves_no_run_folder(toy_data, checkpoint, tmp_path):
    missing = tmp_path / "no-such-dataset"
    for i, (argv, root) in enumerate(_missing_root_commands(toy_data, missing, checkpoint)):
        out = tmp_path / f"run{i}"
        result = CliRunner().invoke(train_main, [*argv, "--preset", "smoke", "--out", str(out), "--quiet"])
        assert_one_error_line(result, str(root), "does not exist")
        assert not out.exists(), (argv, sorted(p.name for p in out.rglob("*")))
    assert not missing.exists()


def test_missing_checkpoints_and_weights_leave_no_run_folder(toy_args, tmp_path):
    missing = tmp_path / "missing.pt"
    for i, argv in enumerate([["source-only", "--pretrained", str(missing)],
                              ["stage2", "--pretrained", str(missing)],
                              ["stage3", "--model", str(missing)],
                              ["stage1", "--seg-model", str(missing)],
                              ["all-stages", "--pretrained", str(missing)]]):
        out = tmp_path / f"run{i}"
        result = CliRunner().invoke(train_main, [*argv, *toy_args, "--preset", "smoke", "--out", str(out), "--quiet"])
        assert_one_error_line(result, str(missing))
        assert not out.exists(), argv


def test_a_failing_start_keeps_a_folder_that_was_there(toy_data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    result = CliRunner().invoke(train_main, ["source-only", "--preset", "smoke", "--source-root",
                                             str(tmp_path / "nowhere"), "--out", str(out), "--quiet"])
    assert result.exit_code == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
