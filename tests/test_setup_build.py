"""setup.py's CUDA build of histream_engine._C is done once per change (issue 30, item 7): an install whose sources and
build options are those of the _C kept in build/cmake-<python tag>/ copies it and runs neither CMake nor nvcc; a
changed .cu file, CMakeLists.txt or option builds again. setup.py is imported as a module (its setup() call runs
only as __main__, as pip runs it), and its decision is tested on a copy of the sources."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("pybind11")  # setup.py's build options read its version, as the build does

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("histream_setup", REPO / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no install: setup() runs only as __main__
    return module


@pytest.fixture
def sources(tmp_path):
    """A copy of what _C is built from."""
    root = tmp_path / "src"
    shutil.copytree(REPO / "csrc", root / "csrc")
    shutil.copy(REPO / "CMakeLists.txt", root / "CMakeLists.txt")
    return root


def fake_build(calls: list):
    """Stands in for CMake: records the call and writes a module, as the real build does, into ``lib``."""
    def build(lib: Path) -> Path:
        calls.append(lib)
        lib.mkdir(parents=True, exist_ok=True)
        (lib / "_C.so").write_bytes(b"module %d" % len(calls))
        return lib / "_C.so"
    return build


def test_unchanged_sources_are_not_built_again_and_a_changed_cu_is(setup_py, sources, tmp_path, monkeypatch):
    build_dir, target = tmp_path / "build" / "cmake-x", tmp_path / "pkg" / "_C.so"
    options = {"archs": "80;90a", "nvcc": ["/usr/local/bin/nvcc", 1, 2]}
    calls = []
    first = setup_py.build_fingerprint(sources, options)
    assert setup_py.place_extension(build_dir, first, target, fake_build(calls)) is True
    assert target.read_bytes() == b"module 1" and len(calls) == 1

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"a second build with unchanged sources ran {args[0]}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)  # neither CMake nor nvcc may run
    target.unlink()
    again = setup_py.build_fingerprint(sources, dict(options))
    assert again == first
    assert setup_py.place_extension(build_dir, again, target, fake_build(calls)) is False
    assert len(calls) == 1 and target.read_bytes() == b"module 1"  # the kept module, copied

    cu = sources / "csrc" / "rope_prepass.cu"
    cu.write_text(cu.read_text() + "\n// changed\n")
    changed = setup_py.build_fingerprint(sources, options)
    assert changed != first
    assert setup_py.place_extension(build_dir, changed, target, fake_build(calls)) is True
    assert len(calls) == 2 and target.read_bytes() == b"module 2"


def test_every_input_and_option_changes_the_fingerprint(setup_py, sources):
    options = {"archs": "80;90a", "nvcc": ["/usr/local/bin/nvcc", 1, 2], "env": {}}
    base = setup_py.build_fingerprint(sources, options)
    assert setup_py.build_fingerprint(sources, {**options, "archs": "90a"}) != base
    assert setup_py.build_fingerprint(sources, {**options, "env": {"CXXFLAGS": "-O0"}}) != base
    (sources / "csrc" / "new_kernel.cu").write_text("")
    assert setup_py.build_fingerprint(sources, options) != base
    (sources / "csrc" / "new_kernel.cu").unlink()
    assert setup_py.build_fingerprint(sources, options) == base
    (sources / "CMakeLists.txt").write_text((sources / "CMakeLists.txt").read_text() + "\n# changed\n")
    assert setup_py.build_fingerprint(sources, options) != base
    assert set(setup_py.build_options()) >= {"archs", "nvcc", "ext_suffix", "pybind11", "env"}


def test_a_stamp_is_trusted_only_with_its_module(setup_py, sources, tmp_path):
    build_dir, target = tmp_path / "build", tmp_path / "pkg" / "_C.so"
    fingerprint = setup_py.build_fingerprint(sources, {})
    calls = []
    setup_py.place_extension(build_dir, fingerprint, target, fake_build(calls))
    (build_dir / "lib" / "_C.so").unlink()  # a cleaned tree: the stamp alone proves nothing
    assert setup_py.cached_extension(build_dir, fingerprint) is None
    assert setup_py.place_extension(build_dir, fingerprint, target, fake_build(calls)) is True and len(calls) == 2
    (build_dir / setup_py.STAMP).write_text("{not json")
    assert setup_py.cached_extension(build_dir, fingerprint) is None


def test_the_build_tree_is_kept_in_the_checkout_per_python(setup_py):
    tree = setup_py.cmake_build_dir()
    assert tree.parent == REPO / "build" and tree.name.startswith("cmake-")
    assert (REPO / ".gitignore").read_text().splitlines().count("build/") == 1  # never committed


def test_pybind11_is_found_in_the_build_tree_where_its_path_stays_the_same(setup_py, tmp_path):
    """pip puts pybind11 in a new temporary folder for each build; CMake reads the copy in the kept tree instead, so
    the compile commands, and the objects of unchanged files, stay as they were."""
    first = setup_py.stable_pybind11(tmp_path)
    assert (first / "pybind11Config.cmake").is_file() and tmp_path in first.parents
    stamp = (first / "pybind11Config.cmake").stat().st_mtime_ns
    assert setup_py.stable_pybind11(tmp_path) == first and (first / "pybind11Config.cmake").stat().st_mtime_ns == stamp
