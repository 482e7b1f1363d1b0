from pathlib import Path

import pytest

from minigpt4.common.registry import Registry, UnknownNameError


def test_register_and_look_up():
    reg = Registry()

    @reg.register_model("tiny")
    class Tiny:
        pass

    assert reg.get_model_class("tiny") is Tiny
    assert reg.list_models() == ["tiny"]


def test_unknown_name_lists_the_valid_ones():
    reg = Registry()
    reg.register_processor("b")(type("B", (), {}))
    reg.register_processor("a")(type("A", (), {}))
    with pytest.raises(UnknownNameError, match=r"unknown processor 'c'; registered processors: a, b"):
        reg.get_processor_class("c")


def test_duplicate_name_raises():
    reg = Registry()
    reg.register_task("t")(type("T", (), {}))
    with pytest.raises(KeyError, match="already registered"):
        reg.register_task("t")(type("U", (), {}))


def test_paths():
    reg = Registry()
    reg.register_path("root", "/x")
    assert reg.get_path("root") == "/x"
    with pytest.raises(TypeError):
        reg.register_path("bad", 3)
    with pytest.raises(UnknownNameError, match="registered paths: root"):
        reg.get_path("nope")


def test_package_registers_its_paths():
    """The reference's two registered paths, which users' scripts read: the package folder and
    the checkout above it (found here from files that must be there, not from the constants)."""
    import minigpt4
    from minigpt4.common.registry import registry

    library_root = Path(registry.get_path("library_root"))
    assert library_root == Path(minigpt4.__file__).resolve().parent
    assert (library_root / "configs" / "models" / "minigpt4.yaml").is_file()
    repo_root = Path(registry.get_path("repo_root"))
    assert repo_root == library_root.parent and (repo_root / "train.py").is_file()
