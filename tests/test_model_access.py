"""Which model identifiers the app's users may name (studio.workspace.ModelAccess)."""
import shutil

import pytest

from studio import checkpoints_dir
from studio.workspace import ModelAccess, Workspace

HOSTILE = ["../../x", "/tmp/x", "..", ".", "~", "x" * 5000, "a\x00b", "tiny-char/../../x"]


@pytest.fixture
def roots(tmp_path, tiny_char_checkpoint):
    """A --models-dir root holding one model folder, and the same model in a folder outside it."""
    src = checkpoints_dir() / tiny_char_checkpoint / "last"
    shutil.copytree(src, tmp_path / "root" / "mine")
    shutil.copytree(src, tmp_path / "outside" / "theirs")
    return tmp_path


def test_presets_runs_and_root_folders_are_allowed(roots, tiny_char_checkpoint):
    access = ModelAccess(roots=(roots / "root",), local_folders=False)
    for ok in ("v2", "gpt2", tiny_char_checkpoint, f"{tiny_char_checkpoint}/last", str(roots / "root" / "mine")):
        assert access.check(ok) == ok
    assert access.listed() == [str((roots / "root" / "mine").resolve())]
    ws = Workspace(access=access)
    assert str((roots / "root" / "mine").resolve()) in ws.list_models() and "v2" in ws.list_models()
    assert ws.model(str(roots / "root" / "mine"), device="cpu").n_params > 0


@pytest.mark.parametrize("value", HOSTILE)
def test_a_reachable_app_refuses_everything_else_naming_the_field(roots, value):
    access = ModelAccess(roots=(roots / "root",), local_folders=False)
    with pytest.raises(ValueError, match=r"^model A .* not found") as e:
        access.check(value, "model A")
    assert str(roots) not in str(e.value) and "Traceback" not in str(e.value) and len(str(e.value)) < 1000


def test_a_reachable_app_is_no_oracle_for_folders_outside_its_roots(roots):
    """An existing model folder and a missing one get the same message: only the name differs."""
    access = ModelAccess(roots=(roots / "root",), local_folders=False)
    messages = []
    for path in (roots / "outside" / "theirs", roots / "outside" / "nope", roots / "root" / ".." / "outside" / "theirs"):
        with pytest.raises(ValueError) as e:
            access.check(str(path))
        messages.append(str(e.value).replace(repr(str(path)[:40] + "..."), "NAME").replace(repr(str(path)), "NAME"))
    assert messages[0] == messages[1] == messages[2] and "NAME" in messages[0]
    (roots / "root" / "link").symlink_to(roots / "outside" / "theirs")  # a link out of a root leads nowhere
    with pytest.raises(ValueError, match="not found"):
        access.check(str(roots / "root" / "link"))


def test_a_localhost_app_takes_typed_folders_but_not_missing_ones(roots):
    access = ModelAccess(local_folders=True)
    assert access.check(str(roots / "outside" / "theirs")) == str(roots / "outside" / "theirs")
    for value in ("/tmp/x-not-here", "x" * 5000, "a\x00b", ""):
        with pytest.raises(ValueError, match="^model"):
            access.check(value)


def test_a_missing_root_is_refused_at_launch(tmp_path):
    with pytest.raises(ValueError, match="models dir .* is not a folder"):
        ModelAccess(roots=(tmp_path / "nope",))
