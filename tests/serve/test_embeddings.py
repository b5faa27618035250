"""serve.embeddings.EmbeddingsDir, the one resolver of served files: a name is a bare file name in --embeds-dir whose
path, every link followed, is a readable regular file inside the folder, with a suffix the loader reads. Links that
stay inside are served (as the file they reach); everything else is neither listed nor served."""

import os

import pytest

from histream_engine.serve.embeddings import EmbeddingsDir


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "embeds"
    (d / "sub").mkdir(parents=True)
    (d / "a.pt").write_bytes(b"a")
    (d / "sub" / "b.safetensors").write_bytes(b"b")
    (d / "b.safetensors").symlink_to(d / "sub" / "b.safetensors")  # inside, through a subfolder
    (d / "alias.pt").symlink_to("a.pt")  # relative, inside
    (tmp_path / "secret.pt").write_bytes(b"s")
    (d / "out.pt").symlink_to(tmp_path / "secret.pt")
    (d / "up.pt").symlink_to("../secret.pt")
    (d / "loop.pt").symlink_to("loop.pt")
    (d / "notes.txt").write_text("n")
    (d / "notes.pt").symlink_to("notes.txt")
    (d / "folder.pt").mkdir()
    (d / "c.json").write_text("{}")
    return d


def test_only_readable_files_inside_are_listed_and_served(folder):
    embeds = EmbeddingsDir(folder)
    assert embeds.names() == ["a.pt", "alias.pt", "b.safetensors"]
    assert embeds.path("alias.pt") == str((folder / "a.pt").resolve())  # the file it reaches, not the link
    assert embeds.path("b.safetensors") == str((folder / "sub" / "b.safetensors").resolve())
    assert embeds.path("") == ""
    for name in ("out.pt", "up.pt", "loop.pt", "notes.pt", "folder.pt", "c.json", "../secret.pt", "sub/b.safetensors",
                 str(folder / "a.pt"), ".", "..", "missing.pt"):
        with pytest.raises(ValueError, match=f"no embeddings file '{name}' on this server; it has"):
            embeds.path(name)


def test_a_folder_given_through_a_link_serves_its_files(folder, tmp_path):
    (tmp_path / "link").symlink_to(folder)
    assert EmbeddingsDir(tmp_path / "link").names() == ["a.pt", "alias.pt", "b.safetensors"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_not_listed(folder):
    (folder / "a.pt").chmod(0)
    try:
        assert EmbeddingsDir(folder).names() == ["b.safetensors"]
    finally:
        (folder / "a.pt").chmod(0o600)
