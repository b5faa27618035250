"""Optional dependencies: a package that is not installed is named with the extra that installs it; one that is
installed but fails to import is reported as that failure, never as "not installed" (issue 30, item 2)."""

import sys

import pytest

from histream_engine.optional import OptionalDependencyError, is_installed, missing_reason, require


def write_package(root, name: str, init: str) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(init)


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    """A folder on sys.path for packages made by the test; whatever they import is forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_missing_package_is_named_with_its_extra():
    with pytest.raises(OptionalDependencyError) as err:
        require("histream_no_such_package", "text", "the thing")
    assert str(err.value) == "the thing needs histream_no_such_package, which is not installed: pip install 'histream_engine[text]'"
    assert err.value.installed is False and err.value.package == "histream_no_such_package"
    assert not is_installed("histream_no_such_package")
    assert "pip install histream_no_such_package" in missing_reason("histream_no_such_package", None, "the thing")


def test_an_import_error_inside_an_installed_package_is_that_error(on_path):
    write_package(on_path, "histream_broken_dep", "import histream_no_such_dependency\n")
    write_package(on_path, "histream_broken_name", "from os import no_such_name\n")
    for package, cause in (("histream_broken_dep", "No module named 'histream_no_such_dependency'"),
                           ("histream_broken_name", "cannot import name 'no_such_name' from 'os'")):
        assert is_installed(package) and missing_reason(package, "text", "the thing") is None
        with pytest.raises(OptionalDependencyError) as err:
            require(package, "text", "the thing")
        message = str(err.value)
        assert message.startswith(f"the thing needs {package}, which is installed but fails to import: ") and cause in message
        assert "pip install" not in message and "\n" not in message and err.value.installed is True


def test_a_lazily_imported_attribute_that_fails_is_the_real_error(on_path):
    """transformers imports its classes on attribute access: the failure of that import is what is reported."""
    write_package(on_path, "histream_lazy", "def __getattr__(name):\n    raise ImportError(f'{name} needs a module a shadow hides')\n")
    with pytest.raises(OptionalDependencyError, match="installed but fails to import: ImportError: Model needs a module a shadow hides"):
        require("histream_lazy", "text", "the thing", "Model")
    write_package(on_path, "histream_fine", "A, B = 1, 2\n")
    assert require("histream_fine", None, "x", "A", "B") == (1, 2) and require("histream_fine", None, "x", "B") == 2


def test_the_text_encoder_reports_a_broken_transformers_as_broken(on_path, monkeypatch, tmp_path):
    """The issue's case: transformers is installed, and an ImportError inside it (there, a shadowed module) was
    reported as "needs transformers: pip install"."""
    from histream_engine.text_encoder import load_text_encoder

    write_package(on_path, "transformers", "raise ImportError('cannot import name Kernel from kernels (a shadow)')\n")
    monkeypatch.delitem(sys.modules, "transformers", raising=False)
    with pytest.raises(OptionalDependencyError) as err:
        load_text_encoder(tmp_path / "t5.pth")
    assert "transformers, which is installed but fails to import" in str(err.value)
    assert "cannot import name Kernel from kernels (a shadow)" in str(err.value) and "pip install" not in str(err.value)
