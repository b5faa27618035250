"""Plain ``histream serve --data-dir`` outlives its process (serve/local/queue.py, jobs.py), on the tiny model in a real
server process: SIGTERM drains (the running chunk finishes, the state is saved, the running and queued jobs are written
down) and the next start resumes the running job from its checkpoint and runs the queued one; after SIGKILL the next
start resumes the running job from its last checkpoint and counts the crash. Every finished video holds every frame
once. A long test (three more server processes): a job that crashed its server more often than --max-resumes allows
is failed with that reason, and a finished job is kept across the restarts."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
import torch  # noqa: E402

from histream_engine.model.dit import WanDiT  # noqa: E402

LONG = {"frames": 153, "width": 32, "height": 32, "schedule": "histream", "prompt_embeds": "calm.pt"}  # 13 chunks
SHORT = {"frames": 21, "width": 32, "height": 32, "schedule": "histream", "prompt_embeds": "calm.pt"}  # 2 chunks


class Server:
    """``histream serve`` in its own process; its output goes to a file (``log``) that a failing test shows."""

    count = 0

    def __init__(self, data: Path, embeds: Path, *extra: str):
        Server.count += 1
        self.log = data.parent / f"server-{Server.count}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "histream_engine", "serve", "--port", "0", "--data-dir",
                                          str(data), "--embeds-dir", str(embeds), *extra], stdout=out,
                                         stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        t0 = time.time()
        while not (lines := [ln for ln in self.log.read_text().splitlines() if ln.startswith("open http")]):
            assert self.proc.poll() is None and time.time() - t0 < 120, f"the server did not start:\n{self.log.read_text()}"
            time.sleep(0.1)
        self.base = lines[0].split()[1].rstrip("/")

    def post(self, body) -> str:
        r = httpx.post(self.base + "/api/streams", json=body, timeout=60)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def status(self, job: str) -> dict:
        try:
            return httpx.get(self.base + f"/api/streams/{job}", timeout=30).json()
        except httpx.ConnectError as exc:
            raise AssertionError(f"the server is gone (exit {self.proc.poll()}):\n{self.log.read_text()[-3000:]}") from exc

    def wait(self, condition, timeout: float, what: str):
        t0 = time.time()
        while not (value := condition()):
            assert time.time() - t0 < timeout and self.proc.poll() is None, \
                f"{what}: not within {timeout} s (server exit {self.proc.poll()}):\n{self.log.read_text()[-3000:]}"
            time.sleep(0.05)
        return value

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=120)


def record(data: Path, job: str) -> dict:
    return json.loads((data / "jobs" / job / "job.json").read_text())


def finished(server: Server, job: str, timeout: float = 120) -> dict:
    return server.wait(lambda: (s := server.status(job))["state"] in ("done", "cancelled", "failed") and s, timeout,
                       f"job {job} ended")


def video_frames(server: Server, status: dict, tmp: Path) -> int:
    path = tmp / f"{status['id']}.mp4"
    path.write_bytes(httpx.get(server.base + status["video"], timeout=30).content)
    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


@pytest.fixture
def embeds(tmp_path):
    folder = tmp_path / "embeds"
    folder.mkdir()
    torch.save(torch.randn(8, WanDiT("tiny").config.text_dim, generator=torch.Generator().manual_seed(1)), folder / "calm.pt")
    return folder


def test_sigterm_drains_and_sigkill_resumes_from_the_last_checkpoint(tmp_path, embeds):
    data = tmp_path / "data"
    first = Server(data, embeds, "--max-resumes", "1")
    long, short = first.post(LONG), first.post(SHORT)
    first.wait(lambda: first.status(long)["chunks"] >= 2, 120, "two chunks")
    assert first.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    drained, queued = record(data, long), record(data, short)
    assert drained["state"] == "running" and drained["drained"] and drained["checkpoint"]["chunk"] == drained["chunks"]
    assert queued["state"] == "queued"
    # the next start resumes the drained job from its checkpoint, first; then SIGKILL mid-chunk
    second = Server(data, embeds, "--max-resumes", "1")
    resumed_at = drained["chunks"]
    second.wait(lambda: second.status(long)["chunks"] >= resumed_at + 2, 120, "two more chunks")
    assert second.status(short)["state"] == "queued"
    second.stop(signal.SIGKILL)
    crashed = record(data, long)
    assert crashed["state"] == "running" and not crashed["drained"] and crashed["attempts"] == 2
    # a crash: the next start resumes from the last checkpoint on disk, and counts it
    third = Server(data, embeds, "--max-resumes", "1")
    done = finished(third, long)
    assert done["state"] == "done" and done["chunks"] == 13 and done["attempts"] == 3, done
    assert video_frames(third, done, tmp_path) == 153  # every frame once, over three processes
    short_done = finished(third, short)
    assert short_done["state"] == "done" and video_frames(third, short_done, tmp_path) == 21
    third.stop(signal.SIGTERM)


@pytest.mark.long  # three more server processes: .ci/run runs it after the default run
def test_a_job_that_keeps_crashing_its_server_fails_with_the_reason_and_finished_jobs_are_kept(tmp_path, embeds):
    data = tmp_path / "data"
    first = Server(data, embeds, "--max-resumes", "1")
    short = finished(first, first.post(SHORT))
    again = first.post(LONG)
    first.wait(lambda: first.status(again)["chunks"] >= 1, 120, "a chunk")
    first.stop(signal.SIGKILL)
    at = record(data, again)["checkpoint"]["chunk"]
    # resumed once (--max-resumes 1), crashed again, then failed with the reason
    second = Server(data, embeds, "--max-resumes", "1")
    second.wait(lambda: second.status(again)["chunks"] >= at + 1, 120, "a chunk after the resume")
    second.stop(signal.SIGKILL)
    third = Server(data, embeds, "--max-resumes", "1")
    failed = finished(third, again, 30)
    assert failed["state"] == "failed" and "at most 1 times" in failed["error"], failed
    assert short["state"] == "done" and short == {**third.status(short["id"]), "position": None}  # kept across restarts
    third.stop(signal.SIGTERM)
