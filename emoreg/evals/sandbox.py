"""Run untrusted Python test suites against untrusted solutions in a subprocess.

:func:`run_tests` writes the solution to ``solution.py`` and the tests to ``test_solution.py`` (after a
``from solution import <function_name>`` line) in a fresh temporary directory, then runs a tiny test runner of
its own (no pytest inside the sandbox) with ``sys.executable -I`` (isolated mode: no user site, no ``PYTHON*``
environment variables, script directory not on ``sys.path``). The runner calls every module-level ``test_*``
function in definition order and records ``passed`` (returned), ``failed`` (``AssertionError``) or ``error``
(any other exception, including ``SystemExit``) for each one, writing one JSON line per event as it goes, so a
run that is killed mid-way still reports the tests that finished.

Containment, all of it **best effort and not a security boundary** (run real adversarial code in a VM):

* wall-clock limit (default 10 s) and a process-count limit (default 32): a small supervisor process starts
  the runner and, on Linux, makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``), so every
  process the code starts stays its descendant even after ``setsid()`` or a double fork. It polls the
  descendants (``/proc``) every 20 ms, and when the runner ends, the time is up or there are more than
  ``max_processes`` descendants, it kills them all and waits until none is left; the whole session is killed
  as well. Elsewhere (no ``/proc``) only the process group is killed, and a process that left it survives;
* where the :mod:`resource` module exists (Linux, macOS): address-space (memory), CPU-time and file-size
  limits and no core dumps, set by the runner itself before any untrusted code is imported (macOS ignores the
  address-space limit);
* no network: the environment is rebuilt from scratch (no proxy variables, ``HOME``/``TMPDIR`` inside the
  sandbox directory) and, before the solution is imported, a guard replaces ``socket.socket.connect``,
  ``connect_ex``, ``sendto``, ``sendmsg``, ``socket.create_connection``, ``socket.getaddrinfo`` and
  ``socket.gethostbyname(_ex)`` with functions that record the attempt and raise :class:`PermissionError`
  (code that talks to ``_socket`` directly or starts another program is not stopped);
* stdout and stderr go to files; only their tails (``max_output_chars``) are kept.

Hash randomisation cannot be pinned under ``-I`` (``PYTHONHASHSEED`` is ignored), so a solution whose result
depends on the iteration order of a set of strings may differ between runs; nothing else here is random.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

TestOutcome = Literal["passed", "failed", "error", "timeout", "not_run"]
SandboxStatus = Literal["ok", "syntax_error", "import_error", "timeout", "network", "memory", "crash"]

_RUNNER = r'''
import json
import sys


def _main():
    with open(sys.argv[1], encoding="utf-8") as handle:
        config = json.load(handle)
    log = open(config["results"], "a", encoding="utf-8")

    def emit(event):
        log.write(json.dumps(event) + "\n")
        log.flush()

    try:
        import resource
    except ImportError:
        resource = None
    if resource is not None:
        for name, value in config["rlimits"].items():
            limit = getattr(resource, name, None)
            if limit is None:
                continue
            try:
                _, hard = resource.getrlimit(limit)
                if hard != resource.RLIM_INFINITY:
                    value = min(value, hard)
                resource.setrlimit(limit, (value, hard if name == "RLIMIT_CPU" else value))
            except (ValueError, OSError):
                emit({"event": "rlimit_unavailable", "name": name})

    import socket

    def guard(call):
        def blocked(*args, **kwargs):
            target = args[1] if call.startswith("socket.socket.") and len(args) > 1 else (args[0] if args else None)
            emit({"event": "network", "call": call, "target": repr(target)[:200]})
            raise PermissionError("network access is disabled in the emoreg sandbox (" + call + ")")
        return blocked

    for attribute in ("connect", "connect_ex", "sendto", "sendmsg"):
        setattr(socket.socket, attribute, guard("socket.socket." + attribute))
    for attribute in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        setattr(socket, attribute, guard("socket." + attribute))

    def describe(exc):
        text = type(exc).__name__
        message = str(exc)
        return (text + ": " + message if message else text)[:500]

    sys.path.insert(0, config["workdir"])
    sys.dont_write_bytecode = True
    emit({"event": "started"})
    try:
        import test_solution
    except BaseException as exc:
        emit({"event": "import_error", "type": type(exc).__name__, "error": describe(exc)})
        emit({"event": "done"})
        return
    tests = [(name, value) for name, value in vars(test_solution).items()
             if name.startswith("test_") and callable(value)]
    emit({"event": "collected", "names": [name for name, _ in tests]})
    for name, test in tests:
        emit({"event": "start", "name": name})
        try:
            test()
        except AssertionError as exc:
            emit({"event": "result", "name": name, "outcome": "failed", "type": type(exc).__name__,
                  "error": describe(exc)})
        except BaseException as exc:
            emit({"event": "result", "name": name, "outcome": "error", "type": type(exc).__name__,
                  "error": describe(exc)})
        else:
            emit({"event": "result", "name": name, "outcome": "passed"})
    emit({"event": "done"})


_main()
'''

_SUPERVISOR = r'''
import ctypes
import json
import os
import signal
import subprocess
import sys
import time


def _descendants(root):
    # Live (not zombie) descendants of root, from /proc; None where /proc is missing.
    if not os.path.isdir("/proc"):
        return None
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields and fields[0] != "Z":
            parents[int(name)] = int(fields[1])
    children = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        for pid in children.get(stack.pop(), []):
            found.append(pid)
            stack.append(pid)
    return found


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_all(me, child):
    # Kill every descendant until none is left (a process may fork while the others die).
    killed = set()
    for _ in range(500):
        alive = _descendants(me)
        if alive is None:  # no /proc: the runner only (the caller kills the process group)
            if child.poll() is None:
                child.kill()
            return killed
        if not alive:
            return killed
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:
                pass
        _reap()
        time.sleep(0.005)
    return killed


def _main():
    with open(sys.argv[1], encoding="utf-8") as handle:
        config = json.load(handle)
    subreaper = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            subreaper = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError):
            subreaper = False
    me = os.getpid()
    child = subprocess.Popen(config["command"], cwd=config["cwd"], env=config["env"], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + config["timeout_s"]
    reason, peak = None, 1
    while child.poll() is None:
        if time.monotonic() >= deadline:
            reason = "timeout"
            break
        alive = _descendants(me)
        if alive is not None:
            peak = max(peak, len(alive))
            if len(alive) > config["max_processes"]:
                reason = "processes"
                break
        time.sleep(0.02)
    stragglers = [pid for pid in (_descendants(me) or []) if pid != child.pid] if reason is None else []
    killed = _kill_all(me, child)
    child.wait()
    _reap()
    with open(config["results"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"event": "supervisor", "reason": reason, "returncode": child.returncode,
                              "stragglers": len(stragglers), "killed": len(killed), "peak_processes": peak,
                              "subreaper": subreaper}) + "\n")


_main()
'''


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandbox run.

    Attributes:
        timeout_s: wall-clock limit; the process group is killed when it is reached.
        memory_bytes: address-space limit (``RLIMIT_AS``); ``None`` leaves it unlimited.
        cpu_s: CPU-time limit (``RLIMIT_CPU``); ``None`` uses the whole seconds of ``timeout_s`` plus two.
        file_bytes: largest file the code may write (``RLIMIT_FSIZE``; stdout/stderr are files too).
        max_output_chars: how much of the end of stdout and stderr is kept.
        max_processes: most processes the code may run at once (the runner included); more ends the run.
    """

    timeout_s: float = 10.0
    memory_bytes: int | None = 1 << 30
    cpu_s: int | None = None
    file_bytes: int = 16 << 20
    max_output_chars: int = 2000
    max_processes: int = 32

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.memory_bytes is not None and self.memory_bytes < 64 << 20:
            raise ValueError(f"memory_bytes must be at least 64 MiB (the interpreter needs it), "
                             f"got {self.memory_bytes}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"cpu_s must be at least 1, got {self.cpu_s}")
        if self.file_bytes < 1 << 20:
            raise ValueError(f"file_bytes must be at least 1 MiB, got {self.file_bytes}")
        if self.max_output_chars < 0:
            raise ValueError(f"max_output_chars must be >= 0, got {self.max_output_chars}")
        if self.max_processes < 1:
            raise ValueError(f"max_processes must be at least 1 (the runner), got {self.max_processes}")

    def rlimits(self) -> dict[str, int]:
        """The ``resource`` limits the runner sets on itself, by ``RLIMIT_*`` name."""
        limits = {
            "RLIMIT_CPU": self.cpu_s if self.cpu_s is not None else int(self.timeout_s) + 2,
            "RLIMIT_FSIZE": self.file_bytes,
            "RLIMIT_CORE": 0,
        }
        if self.memory_bytes is not None:
            limits["RLIMIT_AS"] = self.memory_bytes
        return limits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TestResult:
    """The outcome of one test function (``error`` is ``"Type: message"`` for failures and errors)."""

    name: str
    outcome: TestOutcome
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "outcome": self.outcome, "error": self.error}


@dataclass
class SandboxResult:
    """Everything one sandbox run observed.

    ``status`` is ``ok`` (the runner finished every test), ``syntax_error`` (the solution does not compile;
    nothing was run), ``import_error`` (importing the tests, hence the solution, raised), ``timeout`` (killed at
    the wall-clock or CPU limit), ``network`` (a network call was attempted, whatever happened next),
    ``memory`` (a ``MemoryError`` was raised: the memory limit stopped it) or ``crash`` (the process died or
    exited before the runner finished).
    """

    status: SandboxStatus
    tests: list[TestResult] = field(default_factory=list)
    error: str | None = None
    network_attempts: list[dict[str, str]] = field(default_factory=list)
    returncode: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    seconds: float = 0.0

    @property
    def outcomes(self) -> dict[str, TestOutcome]:
        return {test.name: test.outcome for test in self.tests}

    @property
    def all_passed(self) -> bool:
        """True when the run finished cleanly with at least one test and every test passed."""
        return self.status == "ok" and bool(self.tests) and all(t.outcome == "passed" for t in self.tests)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "tests": [t.to_dict() for t in self.tests], "error": self.error,
                "network_attempts": list(self.network_attempts), "returncode": self.returncode,
                "stdout_tail": self.stdout_tail, "stderr_tail": self.stderr_tail, "seconds": self.seconds}


def run_tests(solution: str, tests: str, function_name: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run the test functions of ``tests`` against ``solution`` in a fresh subprocess sandbox.

    Args:
        solution: the source of ``solution.py``; it must define ``function_name``.
        tests: the source of the test module, without an import line (``from solution import
            <function_name>`` is prepended).
        function_name: the function the tests call.
        limits: time, memory and output limits.
    """
    if not function_name.isidentifier():
        raise ValueError(f"function_name must be a Python identifier, got {function_name!r}")
    start = time.perf_counter()
    try:
        compile(solution, "solution.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:  # ValueError: source with NUL bytes
        return SandboxResult(status="syntax_error", error=f"{type(exc).__name__}: {exc}"[:500],
                             seconds=time.perf_counter() - start)
    with tempfile.TemporaryDirectory(prefix="emoreg-sandbox-") as root:
        root_path = Path(root)
        work = root_path / "work"
        work.mkdir()
        (work / "solution.py").write_text(solution, encoding="utf-8")
        (work / "test_solution.py").write_text(f"from solution import {function_name}\n\n{tests}", encoding="utf-8")
        runner = root_path / "runner.py"
        runner.write_text(_RUNNER, encoding="utf-8")
        results = root_path / "results.jsonl"
        config = root_path / "config.json"
        config.write_text(json.dumps({"results": str(results), "workdir": str(work), "rlimits": limits.rlimits()}),
                          encoding="utf-8")
        stdout_path, stderr_path = root_path / "stdout.txt", root_path / "stderr.txt"
        supervisor = root_path / "supervisor.py"
        supervisor.write_text(_SUPERVISOR, encoding="utf-8")
        supervisor_config = root_path / "supervisor.json"
        env = _sandbox_env(work)
        supervisor_config.write_text(json.dumps({
            "command": [sys.executable, "-I", "-B", str(runner), str(config)], "cwd": str(work), "env": env,
            "timeout_s": limits.timeout_s, "max_processes": limits.max_processes, "results": str(results),
        }), encoding="utf-8")
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            returncode, timed_out = _execute([sys.executable, "-I", "-B", str(supervisor), str(supervisor_config)],
                                             work, env, stdout, stderr, limits.timeout_s + _SUPERVISOR_GRACE_S)
        events = _read_events(results)
        supervised = [e for e in events if e.get("event") == "supervisor"]
        process_limit = False
        if supervised:  # the supervisor's view of the runner replaces the supervisor's own exit status
            returncode = supervised[-1].get("returncode")
            timed_out = timed_out or supervised[-1].get("reason") == "timeout"
            process_limit = supervised[-1].get("reason") == "processes"
            if timed_out:
                returncode = None
        result = _interpret(events, returncode, timed_out)
        if process_limit:
            result.status = "crash"
            result.error = (f"killed: the code ran more than {limits.max_processes} processes at once "
                            "(SandboxLimits.max_processes)")
        result.stdout_tail = _tail(stdout_path, limits.max_output_chars)
        result.stderr_tail = _tail(stderr_path, limits.max_output_chars)
    result.seconds = time.perf_counter() - start
    return result


#: Extra wall-clock seconds the supervisor gets to kill and reap everything after its own time limit.
_SUPERVISOR_GRACE_S = 5.0


def _sandbox_env(work: Path) -> dict[str, str]:
    """A minimal environment: no proxies, no credentials, home and temp inside the sandbox."""
    env = {"PATH": os.defpath, "HOME": str(work), "TMPDIR": str(work), "TEMP": str(work), "TMP": str(work),
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "no_proxy": "*", "NO_PROXY": "*"}
    if sys.platform == "win32":  # the interpreter needs these to start on Windows
        env.update({k: os.environ[k] for k in ("SYSTEMROOT", "COMSPEC") if k in os.environ})
    return env


def _execute(command: list[str], cwd: Path, env: dict[str, str], stdout, stderr,
             timeout_s: float) -> tuple[int | None, bool]:
    """Run ``command`` in its own process group; kill the whole group at the time limit and afterwards."""
    posix = os.name == "posix"
    process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                               start_new_session=posix)
    timed_out = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(process, posix)  # also reaps children the code left running
        process.wait()
    return (None if timed_out else process.returncode), timed_out


def _kill_group(process: subprocess.Popen, posix: bool) -> None:
    if posix:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    elif process.poll() is None:
        process.kill()


def _read_events(path: Path) -> list[dict[str, Any]]:
    """The runner's JSON lines (a line cut short by a kill is ignored)."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _interpret(events: list[dict[str, Any]], returncode: int | None, timed_out: bool) -> SandboxResult:
    """Turn the runner's events and the exit status into a :class:`SandboxResult`."""
    collected: list[str] = []
    finished: dict[str, TestResult] = {}
    running: str | None = None
    import_error: str | None = None
    memory = False
    network = []
    done = False
    for event in events:
        kind = event.get("event")
        if kind == "collected":
            collected = [str(name) for name in event.get("names", [])]
        elif kind == "start":
            running = str(event.get("name"))
        elif kind == "result":
            name = str(event.get("name"))
            finished[name] = TestResult(name, event.get("outcome", "error"), event.get("error"))
            memory = memory or event.get("type") == "MemoryError"
            running = None
        elif kind == "import_error":
            import_error = str(event.get("error"))
            memory = memory or event.get("type") == "MemoryError"
        elif kind == "network":
            network.append({"call": str(event.get("call")), "target": str(event.get("target"))})
        elif kind == "done":
            done = True
    cpu_killed = returncode is not None and hasattr(signal, "SIGXCPU") and returncode == -signal.SIGXCPU
    killed = "killed at the wall-clock time limit" if timed_out else "killed at the CPU-time limit"
    tests = []
    for name in collected:
        if name in finished:
            tests.append(finished[name])
        elif name == running and (timed_out or cpu_killed):
            tests.append(TestResult(name, "timeout", killed))
        else:
            tests.append(TestResult(name, "not_run"))
    status: SandboxStatus
    error = import_error
    if timed_out or cpu_killed:
        status, error = "timeout", killed
    elif network:
        status = "network"
        error = f"network access attempted: {network[0]['call']}({network[0]['target']})"
    elif memory:
        status = "memory"
        error = "MemoryError: the code ran into the memory limit"
    elif not done or returncode != 0:
        status = "crash"
        error = f"the process ended with exit status {returncode} before the runner finished" if not done else \
            f"the process ended with exit status {returncode}"
    elif import_error is not None:
        status = "import_error"
    else:
        status = "ok"
    return SandboxResult(status=status, tests=tests, error=error, network_attempts=network, returncode=returncode)


def _tail(path: Path, max_chars: int) -> str:
    """The last ``max_chars`` characters of a text file (read from the end, so huge files stay cheap)."""
    if max_chars == 0 or not path.is_file():
        return ""
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(max(0, size - 4 * max_chars))
        text = handle.read().decode("utf-8", errors="replace")
    return text[-max_chars:]
