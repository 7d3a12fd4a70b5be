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
