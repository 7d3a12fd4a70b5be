"""Names from the UI and the API are names, never paths."""
import os

import pytest

from studio.names import MAX_LEN, inside, plain_name

HOSTILE = ["../../x", "/tmp/x", "..", ".", "~", "", " ", "a/b", "a\\b", ".hidden", "x" * 5000, "a\x00b", None, 5]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_refused_with_the_field_named(value):
    with pytest.raises(ValueError, match="^run name must be a plain name"):
        plain_name(value, "run name")


@pytest.mark.parametrize("value", ["run1", "my-run_2.1", "A" * MAX_LEN, "  padded  "])
def test_plain_names_pass(value):
    assert plain_name(value, "run name") == value.strip()


def test_suffix_is_required_when_asked():
    assert plain_name("chats.jsonl", "file name", ".jsonl") == "chats.jsonl"
    with pytest.raises(ValueError, match="ending in .jsonl"):
        plain_name("chats.txt", "file name", ".jsonl")


def test_inside_refuses_escapes_and_symlinks(tmp_path):
    root = tmp_path / "ck"
    (root / "run").mkdir(parents=True)
    assert inside(root, root / "run" / "last") == (root / "run" / "last").resolve()
    with pytest.raises(ValueError, match="outside"):
        inside(root, root / ".." / "x")
    os.symlink(tmp_path, root / "link")
    with pytest.raises(ValueError, match="outside"):
        inside(root, root / "link" / "x")


@pytest.mark.parametrize("value", ["../../x", "/tmp/x", "..", "~", "x" * 5000, "a\x00b"])
def test_the_train_tab_takes_run_names_not_paths(value):
    from studio import jobs

    with pytest.raises(ValueError, match="^run name must be a plain name"):
        jobs.make_config("v1", "builtin", {}, name=value)
    with pytest.raises(ValueError, match="^run name must be a plain name"):
        jobs.resume(jobs.TrainingJob(), value)


def test_an_empty_run_name_is_made_from_the_model_name():
    from studio import jobs

    cfg = jobs.make_config("v1", "builtin", {"max_steps": 5}, name="  ")
    assert plain_name(cfg.name, "run name").startswith("v1-")


def test_the_training_job_writes_only_inside_the_checkpoints_folder(tmp_path):
    from studio.jobs import TrainingJob

    with pytest.raises(ValueError, match="outside"):
        TrainingJob().start({}, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()
