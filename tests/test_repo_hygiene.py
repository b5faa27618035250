"""No build output is tracked: compiled code belongs to the build, never to git (a built host library once was)."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Leading bytes of compiled artifacts: ELF, Mach-O (both byte orders, fat), PE/COFF, ar archives, Python bytecode
# is recognised by name below.
MAGICS = {b"\x7fELF": "ELF", b"\xcf\xfa\xed\xfe": "Mach-O", b"\xfe\xed\xfa\xcf": "Mach-O", b"\xca\xfe\xba\xbe": "Mach-O fat",
          b"MZ": "PE/COFF", b"!<arch>\n": "ar archive"}
COMPILED_SUFFIXES = (".so", ".dylib", ".dll", ".o", ".a", ".pyc", ".pyd", ".cubin", ".fatbin", ".plan", ".engine", ".whl")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc})")
    return [f for f in out.stdout.decode().split("\0") if f]


def compiled_reason(path: Path) -> str | None:
    name = path.name
    if name.endswith(COMPILED_SUFFIXES) or ".so." in name:
        return f"its name ({name}) is a compiled artifact's"
    if path.is_symlink() or not path.is_file():
        return None
    head = path.open("rb").read(8)
    return next((f"it is an {kind} file" for magic, kind in MAGICS.items() if head.startswith(magic)), None)


def test_no_compiled_artifact_is_tracked():
    bad = {f: why for f in tracked_files() if (why := compiled_reason(ROOT / f))}
    assert not bad, f"tracked build outputs (git rm --cached them; .gitignore should cover them): {bad}"


@pytest.mark.parametrize("name, data", [("lib.so.0.1.0", b""), ("x.bin", b"\x7fELF\x02\x01\x01"), ("a.o", b""), ("t.bin", b"!<arch>\nxx")])
def test_the_check_recognises_compiled_files(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    assert compiled_reason(tmp_path / name) is not None


def test_data_files_pass(tmp_path):
    (tmp_path / "shot.png").write_bytes(b"\x89PNG\r\n\x1a\n....")
    (tmp_path / "r.json").write_text("{}")
    assert compiled_reason(tmp_path / "shot.png") is None and compiled_reason(tmp_path / "r.json") is None


def test_gitignore_covers_versioned_shared_objects():
    out = subprocess.run(["git", "check-ignore", "-q", "python/histream_engine/libhistream_host.so.0.1.0"], cwd=ROOT, timeout=30)
    if out.returncode == 128:
        pytest.skip("not a git checkout")
    assert out.returncode == 0, ".gitignore does not cover versioned shared objects (*.so.*)"
