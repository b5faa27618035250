"""The C++ host examples (the callback form and the stream handle) and host CMakeLists.txt in docs/cpp-host.md are the files
CI builds against the installed package (ctest host.installed_package), so the documented code is the code that compiles
and runs."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def docs_block(lang: str, after: str) -> str:
    text = (REPO / "docs/cpp-host.md").read_text()
    section = text[text.index(after):]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def test_docs_example_is_the_compiled_consumer():
    code = docs_block("cpp", "# C++ hosts")
    assert code == (REPO / "tests/engine/consumer/main.cpp").read_text()
    assert len(code.splitlines()) <= 30


def test_docs_stream_handle_example_is_the_compiled_live_consumer():
    code = docs_block("cpp", "opens a stream handle")
    assert code == (REPO / "tests/engine/consumer/live.cpp").read_text()
    assert len(code.splitlines()) <= 30 and "open_stream" in code and "set_prompt" in code


def test_docs_cmake_is_the_consumer_project():
    cmake = docs_block("cmake", "# C++ hosts")
    assert cmake == (REPO / "tests/engine/consumer/CMakeLists.txt").read_text()
    assert len(cmake.splitlines()) <= 10 and "find_package(histream CONFIG REQUIRED)" in cmake
    assert "add_executable(host_live live.cpp)" in cmake  # consumer_test.cmake runs both programs
