"""Loading an app's file and choosing its App class, and the errors a bad file gives."""

from __future__ import annotations

import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrated import App
from migrated.errors import AmbiguousAppError, AppCodeError, AppFileError, NotAnAppError, UsageError
from migrated.runtime._loader import find_app_class, load_app_class, module_name_for


@pytest.fixture(autouse=True)
def restore_import_state() -> Iterator[None]:
    """The loader imports into this process: undo what it adds to sys.modules and sys.path."""
    modules, path = set(sys.modules), list(sys.path)
    yield
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    sys.path[:] = path


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source).lstrip("\n"))
    return path


ONE_APP = textwrap.dedent(
    """
    import migrated

    class Solo(migrated.App):
        def step(self):
            return None
    """
)


def test_the_only_app_class_is_found(tmp_path: Path) -> None:
    cls = load_app_class(str(write(tmp_path, "solo_app.py", ONE_APP)))
    assert cls.__name__ == "Solo"
    assert issubclass(cls, App)


def test_a_named_class_is_chosen(tmp_path: Path) -> None:
    path = write(tmp_path, "duo_app.py", ONE_APP + "\n\nclass Other(migrated.App):\n    pass\n")
    assert load_app_class(str(path), "Other").__name__ == "Other"
    assert load_app_class(str(path), "Solo").__name__ == "Solo"


def test_app_classes_imported_from_elsewhere_do_not_count(tmp_path: Path) -> None:
    source = "from migrated.runtime._repl import Repl\n" + ONE_APP
    assert load_app_class(str(write(tmp_path, "importer_app.py", source))).__name__ == "Solo"
    with pytest.raises(NotAnAppError):
        load_app_class(str(write(tmp_path, "only_import_app.py", "from migrated.runtime._repl import Repl\n")))


@pytest.mark.parametrize("target", ["missing.py", "."])
def test_a_path_that_is_not_a_file_is_refused(tmp_path: Path, target: str) -> None:
    path = tmp_path / target
    with pytest.raises(AppFileError, match=str(path).replace(".", r"\.")):
        load_app_class(str(path))


def test_a_file_without_an_app_class_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "plain_script.py", "class NotAnApp:\n    pass\n")
    with pytest.raises(NotAnAppError, match=r"plain_script\.py") as info:
        load_app_class(str(path))
    assert "migrated.App" in str(info.value)


def test_several_app_classes_without_a_choice_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "many_apps.py", ONE_APP + "\n\nclass Zeta(migrated.App):\n    pass\n")
    with pytest.raises(AmbiguousAppError) as info:
        load_app_class(str(path))
    message = str(info.value)
    assert "Solo" in message
    assert "Zeta" in message
    assert "many_apps.py:ClassName" in message


@pytest.mark.parametrize("name", ["Missing", "helper", "NotAnApp"])
def test_a_chosen_name_that_is_not_an_app_class_is_refused(tmp_path: Path, name: str) -> None:
    source = ONE_APP + "\n\ndef helper():\n    pass\n\n\nclass NotAnApp:\n    pass\n"
    path = write(tmp_path, "chosen_app.py", source)
    with pytest.raises(NotAnAppError, match=repr(name)):
        load_app_class(str(path), name)


def test_a_syntax_error_names_the_line_and_shows_the_code(tmp_path: Path) -> None:
    path = write(tmp_path, "broken_app.py", "import migrated\n\nclass Broken(migrated.App)\n    pass\n")
    with pytest.raises(AppCodeError) as info:
        load_app_class(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert "class Broken(migrated.App)" in message
    assert "broken_app" not in sys.modules


def test_a_failing_import_names_the_error_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "failing_app.py", "import migrated\n\nimport no_such_module_here\n")
    with pytest.raises(AppCodeError) as info:
        load_app_class(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert "ModuleNotFoundError" in message
    assert "no_such_module_here" in message
    assert "failing_app" not in sys.modules


def test_loader_errors_are_usage_errors() -> None:
    for cls in (AppFileError, NotAnAppError, AmbiguousAppError, AppCodeError):
        assert issubclass(cls, UsageError)
        assert cls.exit_code == 2


def test_module_names_do_not_shadow_loaded_modules() -> None:
    assert module_name_for(Path("/x/json.py")) == "_mig_app_json"
    assert module_name_for(Path("/x/my-app.py")) == "app"
    assert module_name_for(Path("/x/fresh_app_module_xyz.py")) == "fresh_app_module_xyz"


def test_an_app_file_named_like_a_stdlib_module_loads_without_replacing_it(tmp_path: Path) -> None:
    import json

    cls = load_app_class(str(write(tmp_path, "json.py", ONE_APP)))
    assert cls.__name__ == "Solo"
    assert sys.modules["json"] is json


def test_find_app_class_in_a_module() -> None:
    module = types.ModuleType("handmade")

    class Handmade(App):
        pass

    Handmade.__module__ = "handmade"
    module.Handmade = Handmade  # type: ignore[attr-defined]
    assert find_app_class(module, Path("handmade.py")) is Handmade
    with pytest.raises(NotAnAppError):
        find_app_class(types.ModuleType("empty"), Path("empty.py"))
