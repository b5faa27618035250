"""tests/background.py keeps the suite's long jobs (the sm_90a compiles, the ONNX exports) beside the tests, not in
front of them. These fail when a job would run in the foreground: its ``Job.fixture`` is not the fixture that waits
for it (collection never starts it), the modules that wait are not moved last, or a fixture starts a job itself."""

import ast
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import background

TESTS = Path(__file__).resolve().parent


def _fixtures_waiting() -> dict[str, set[str]]:
    """job name -> the names of the functions in tests/ that call ``background.result(<job name>)``."""
    found: dict[str, set[str]] = {}
    for path in TESTS.rglob("*.py"):
        if path == Path(__file__).resolve():  # its own calls drive a stand-in list of jobs
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for call in ast.walk(fn):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "result"
                        and isinstance(call.func.value, ast.Name) and call.func.value.id == "background"
                        and call.args and isinstance(call.args[0], ast.Constant)):
                    found.setdefault(call.args[0].value, set()).add(fn.name)
    return found


def test_each_job_names_the_fixture_that_waits_for_it():
    waiting = _fixtures_waiting()
    assert set(waiting) == set(background.JOBS), "a job nobody waits for, or a result() of an unknown job"
    for name, job in background.JOBS.items():
        assert waiting[name] == {job.fixture}, f"job {name}: Job.fixture={job.fixture!r}, but {waiting[name]} wait for it"


def _item(module: str, *fixtures: str):
    return SimpleNamespace(module=SimpleNamespace(__name__=module), fixturenames=list(fixtures), name=f"{module}:{fixtures}")


def test_modules_that_wait_run_last_in_their_order():
    a, b1, c, b2, d = (_item("a"), _item("b", "exports"), _item("c", "tmp_path"), _item("b"), _item("d", "aot_summary"))
    assert background.run_last([d, a, b1, c, b2]) == [a, c, d, b1, b2]


def test_collection_starts_jobs_and_a_fixture_that_starts_one_is_reported(monkeypatch, tmp_path):
    quick = lambda out: [sys.executable, "-c", f"open({str(out / 'made')!r}, 'w').write('x')"]
    jobs = {"seen": background.Job("seen_fixture", quick), "unseen": background.Job("unseen_fixture", quick)}
    monkeypatch.setattr(background, "JOBS", jobs)
    # a runner of its own: the suite's real jobs may occupy the shared one for minutes
    monkeypatch.setattr(background, "_runner", ThreadPoolExecutor(max_workers=1))
    monkeypatch.setattr(background, "_root", tmp_path)
    background.start({"seen_fixture", "tmp_path"})
    assert jobs["seen"].started_by == "collection" and jobs["unseen"].future is None
    assert background.in_foreground() == []
    proc, out = background.result("seen")
    assert proc.returncode == 0 and (out / "made").read_text() == "x"
    background.result("unseen")
    assert background.in_foreground() == ["unseen"]
    background._runner.shutdown(wait=True)
