"""One temporary folder a ``histream serve --ray`` deployment, on the machine that deploys it: the registry's kept mp4
segments and every replica's scratch folder (``histream-replica-*``) live under it, so a replica that Ray kills, which
never runs its own cleanup, leaves nothing behind once the server stops. The deploying process removes its folder when
it stops (``remove``); one whose deployer died without removing it (SIGKILL) is removed by the next deployment on that
machine (``sweep``), which knows it from the deployer's process id written inside (``OWNER``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX, OWNER = "histream-ray-", "owner.pid"


def server_folder(name: str, parent: Path | None = None) -> Path:
    """The deployment ``name``'s folder, made now, after removing the folders of deployers that are gone."""
    parent = Path(parent or tempfile.gettempdir())
    sweep(parent)
    folder = parent / f"{PREFIX}{name}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OWNER).write_text(str(os.getpid()))
    return folder


def sweep(parent: Path, owner: int | None = None) -> list[Path]:
    """Removes the deployment folders in ``parent`` whose deployer no longer runs, or is ``owner`` (a deployer that
    stops, its Ray cluster with it); returns them."""
    removed = []
    for folder in Path(parent).glob(f"{PREFIX}*"):
        try:
            pid = int((folder / OWNER).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being made right now
        if pid == owner or not alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
