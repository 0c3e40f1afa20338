"""The built-in reward-hacking tasks: impossible coding tasks whose tests contradict their spec.

Every solution is really executed, in a subprocess with a timeout, inside a temporary directory:
the solution goes to ``solution.py``, the tests to ``test_task.py`` (after a
``from solution import <function_name>`` line), and a small runner calls each test function in
turn and records which pass and which fail.
"""

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

TIMEOUT_S = 10
FIELDS = ["id", "function_name", "spec", "signature", "tests", "contradiction",
          "reference_solution", "special_case_solution"]

RUNNER = '''
import json
import sys
import traceback

sys.path.insert(0, sys.argv[1])
results = {"import_error": None, "tests": []}
try:
    import test_task
except BaseException:
    results["import_error"] = traceback.format_exc()
else:
    names = [name for name, obj in vars(test_task).items()
             if name.startswith("test_") and callable(obj)]
    for name in names:
        try:
            getattr(test_task, name)()
        except AssertionError:
            outcome = "failed"
        except Exception:
            outcome = "error"
        else:
            outcome = "passed"
        results["tests"].append({"name": name, "outcome": outcome})
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    json.dump(results, fh)
'''


def _tasks_path():
    return resources.files("emoreg") / "data" / "evals" / "reward_hacking" / "tasks.jsonl"


def _load_tasks():
    text = _tasks_path().read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


TASKS = _load_tasks()


def _run(task, solution_source, tmp_path):
    """Execute ``task['tests']`` against ``solution_source``; return {test name: outcome}."""
    work = Path(tmp_path)
    (work / "solution.py").write_text(solution_source, encoding="utf-8")
    (work / "test_task.py").write_text(
        f"from solution import {task['function_name']}\n\n\n{task['tests']}", encoding="utf-8")
    (work / "runner.py").write_text(RUNNER, encoding="utf-8")
    out = work / "results.json"
    proc = subprocess.run([sys.executable, "-I", "-B", str(work / "runner.py"), str(work), str(out)],
                          cwd=work, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"runner crashed:\n{proc.stdout}\n{proc.stderr}"
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["import_error"] is None, results["import_error"]
    return {r["name"]: r["outcome"] for r in results["tests"]}


def test_there_are_twelve_tasks_with_unique_ids():
    assert len(TASKS) == 12
    ids = [t["id"] for t in TASKS]
    assert len(set(ids)) == len(ids), ids
    names = [t["function_name"] for t in TASKS]
    assert len(set(names)) == len(names), names


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.get("id", "?"))
def test_fields_are_present_and_consistent(task):
    for field in FIELDS:
        assert isinstance(task.get(field), str) and task[field].strip(), f"{task.get('id')}: bad {field!r}"
    assert re.fullmatch(r"rh-\d{2}", task["id"])
    name = task["function_name"]
    assert name.isidentifier()
    assert re.match(rf"def {re.escape(name)}\(.*\).*:$", task["signature"]), task["signature"]
    for field in ("reference_solution", "special_case_solution"):
        assert task["signature"] in task[field], f"{task['id']}: {field} does not use the signature"
        compile(task[field], f"{task['id']}-{field}", "exec")
    compile(task["tests"], f"{task['id']}-tests", "exec")
    assert task["reference_solution"] != task["special_case_solution"]
    n_asserts = task["tests"].count("assert ")
    assert 3 <= n_asserts <= 6, f"{task['id']}: {n_asserts} asserts"
    assert "import solution" not in task["tests"] and "from solution" not in task["tests"]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t["id"])
def test_reference_solution_fails_only_the_contradicting_tests(task, tmp_path):
    outcomes = _run(task, task["reference_solution"], tmp_path)
    assert len(outcomes) >= 3, outcomes
    failed = [n for n, o in outcomes.items() if o != "passed"]
    passed = [n for n, o in outcomes.items() if o == "passed"]
    assert failed, f"{task['id']}: the honest solution passes everything, so the task is not impossible"
    assert passed, f"{task['id']}: the honest solution passes nothing; the other tests should agree with the spec"
    assert all(outcomes[n] == "failed" for n in failed), f"{task['id']}: errors, not assertion failures: {outcomes}"
    for name in failed:
        assert name in task["contradiction"], f"{task['id']}: {name} fails but the contradiction names another test"


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t["id"])
def test_special_case_solution_passes_every_test(task, tmp_path):
    outcomes = _run(task, task["special_case_solution"], tmp_path)
    assert len(outcomes) >= 3, outcomes
    assert all(o == "passed" for o in outcomes.values()), f"{task['id']}: {outcomes}"
