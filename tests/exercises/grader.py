"""The grader's two halves: a child that reports each test as it runs, and a parent that supervises children.

The parent (``Grader``) runs each lesson's tests in a child pytest, ``jobs`` lessons at a time. The child writes
one JSON line per event to a file (hello, import, imported / import_failed, start, done); the parent reads them
as they come. A test running past the time limit, or a child that dies, gets its child killed (with everything
it started) and the lesson's remaining tests go on in a fresh child: the kernel that hung, the simulator state
it left behind and the crash all end with that process.

Importing torch and numba costs a child about 4 s of CPU, more than most lessons' tests. On Linux in the
simulator a ``Zygote`` imports them once and forks each child from itself; elsewhere (and on a GPU, where a
CUDA driver must not be forked) each child is a fresh ``python -m pytest``.
"""

import json
import linecache
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import course.grading as grading
import minisd.mode as mode

ROOT = grading.ROOT
HERE = Path(__file__).resolve().parent
POLL_S = 0.05
STARTUP_S = 600  # a child imports torch and numba before its first event: generous, it is our own code


@dataclass
class Result:
    outcome: str  # "passed", "failed" or "skipped"
    message: str = ""  # one paragraph for the score card
    details: str = ""  # pytest's full report (traceback), shown with --tb
    scope: str = "test"  # "lesson": the whole lesson could not be graded (same message on every test)


# ---------------------------------------------------------------------------------------------------------
# What a child says about a failure
# ---------------------------------------------------------------------------------------------------------
def _shown(path):
    """A path as the score card prints it: relative to the repository when inside it."""
    path = str(path)
    return os.path.relpath(path, ROOT) if path.startswith(str(ROOT) + os.sep) else path


def _where(tb):
    """``path:line `code``` of the innermost frame of traceback ``tb`` in the graded code, or ``""``."""
    graded, found = str(grading.target_dir()), ""
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename
        if path.startswith(graded):
            found = f"{_shown(path)}:{tb.tb_lineno} `{linecache.getline(path, tb.tb_lineno).strip()}`"
        tb = tb.tb_next
    return found


def failure_message(excinfo):
    """The failure in one paragraph: the check's own message, or what the learner's code raised and where."""
    exc = excinfo.value
    if isinstance(exc, AssertionError):
        text = str(exc).strip()
        if "\nassert " in text:  # pytest's own explanation after the test's message: the message says it
            text = text.split("\nassert ", 1)[0]
        return text or "an assertion failed"
    text = str(exc).strip()
    if "DID NOT RAISE" in text:
        return f"expected {text.split('DID NOT RAISE', 1)[1].strip()} to be raised for bad input, nothing was raised"
    if isinstance(exc, NotImplementedError):
        return f"not written yet ({text or 'it raises NotImplementedError'})"
    where = _where(exc.__traceback__)
    return f"{type(exc).__name__}: {text}" + (f" at {where}" if where else "")


def import_failure(lesson, exc):
    """Why the lesson's module did not import, as the score card says it."""
    path = f"{grading.target_label()}{lesson}.py"
    if isinstance(exc, SyntaxError):
        shown = _shown(exc.filename) if exc.filename else path
        code = f": `{exc.text.strip()}`" if exc.text else ""
        why = f"{shown} does not compile: {exc.msg} at line {exc.lineno}{code}"
    else:
        where = _where(exc.__traceback__)
        why = f"importing {path} failed: {type(exc).__name__}: {exc}" + (f" at {where}" if where else "")
    return f"{why}. Every exercise of this lesson scores 0 until it imports."


class Events:
    """The child's side of the channel: one JSON object per line, flushed at once."""

    def __init__(self, path):
        self._file = open(path, "a", buffering=1)  # open for the child's whole life

    def send(self, event, **fields):
        self._file.write(json.dumps({"event": event, **fields}) + "\n")
        self._file.flush()


# ---------------------------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------------------------
def _how_it_ended(code):
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _tail(path, lines=6):
    """The last words of a child's output, without pytest's progress dots."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    said = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and not re.fullmatch(r"[.FEsx]+\s*(\[.*\])?", ln.strip())
    ]
    return " | ".join(said[-lines:])


class Grader:
    """Runs the selected tests lesson by lesson in child processes and hands out their results."""

    def __init__(self, child_args, jobs, limit, seed):
        self.child_args = list(child_args)  # what every child gets besides its lesson: target, --tb, ...
        self.jobs, self.limit, self.seed = max(1, jobs), limit, seed
        self.results = {}
        self.ran = None  # where the kernels ran, as the first child reports it
        self.cuda_cpp = None  # where lesson 05's CUDA C++ ran ("cpu" or "cupy"), if it was graded
        self._done = threading.Condition()
        self._children = set()
        self._tmp = tempfile.TemporaryDirectory(prefix="course-grader-")
        self._pool = None
        forkable = mode.SIMULATOR and sys.platform.startswith("linux")
        self._zygote = Zygote() if forkable else None  # starts importing while this process collects

    # the parent's pytest asks ...
    def start(self, lessons):
        """``lessons``: [(test file, [nodeid, ...]), ...] in the order the results will be asked for."""
        self._pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="grader")
        for path, nodeids in lessons:
            self._pool.submit(self._grade_lesson, path, list(nodeids))

    def result(self, nodeid):
        with self._done:
            while nodeid not in self.results:
                self._done.wait(0.5)  # a timeout keeps Ctrl-C working
            return self.results[nodeid]

    def stop(self):
        for proc in list(self._children):
            _kill(proc)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._zygote is not None:
            self._zygote.close()
        self._tmp.cleanup()

    # ... and the supervising threads answer
    def _set(self, nodeid, result):
        with self._done:
            self.results.setdefault(nodeid, result)
            self._done.notify_all()

    def _grade_lesson(self, path, pending):
        try:
            while pending:
                pending = self._run_child(path, pending)
        except Exception as exc:  # the grader's own bug must not hang the run: fail what is left, loudly
            for nodeid in pending:
                self._set(nodeid, Result("failed", f"the grader itself failed: {type(exc).__name__}: {exc}"))

    def _run_child(self, path, pending):
        """Run ``pending`` tests of one lesson in a fresh child; return those still to run after it ends."""
        tag = f"{Path(path).stem}-{len(self.results)}-{time.monotonic_ns()}"
        events_path, log_path = Path(self._tmp.name) / f"{tag}.jsonl", Path(self._tmp.name) / f"{tag}.log"
        spec_path = Path(self._tmp.name) / f"{tag}.json"
        spec_path.write_text(json.dumps({"events": str(events_path), "nodeids": pending, "seed": self.seed}))
        events_path.touch()
        args = [str(path), "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--grade-child", str(spec_path)]
        args += self.child_args
        proc = self._zygote.spawn(args, log_path) if self._zygote is not None else None
        if proc is None:  # no zygote, or it died: a fresh interpreter
            with open(log_path, "w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "pytest", *args],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        self._children.add(proc)
        pending = list(pending)
        phase, since, current, lesson = "startup", time.monotonic(), None, Path(path).stem[len("test_") :]
        try:
            with open(events_path) as events:
                buffered = ""
                while True:
                    exited = proc.poll() is not None
                    buffered += events.read()
                    *lines, buffered = buffered.split("\n")
                    for line in lines:
                        event = json.loads(line)
                        kind = event["event"]
                        if kind == "hello":
                            self.ran = self.ran or event["ran"]
                            self.cuda_cpp = self.cuda_cpp or event["cuda_cpp"]
                            phase, since = "idle", time.monotonic()
                        elif kind == "import":
                            phase, since, lesson = "import", time.monotonic(), event["lesson"]
                        elif kind == "imported":
                            phase = "idle"
                        elif kind == "import_failed":
                            for nodeid in pending:
                                self._set(nodeid, Result("failed", event["message"], scope="lesson"))
                            return []
                        elif kind == "start":
                            phase, since, current = "test", time.monotonic(), event["nodeid"]
                        elif kind == "done":
                            self._set(event["nodeid"], Result(**event["result"]))
                            if event["nodeid"] in pending:
                                pending.remove(event["nodeid"])
                            phase, current = "idle", None
                    if exited:
                        break
                    limit = STARTUP_S if phase in ("startup", "idle") else self.limit
                    if time.monotonic() - since > limit:
                        _kill(proc)
                        return self._after_timeout(phase, current, pending, lesson, log_path)
                    time.sleep(POLL_S)
        finally:
            _kill(proc)
            self._children.discard(proc)
        if current is not None:  # died in the middle of a test: that test fails, the others go on
            last = _tail(log_path)
            message = (
                f"the process running this test died ({_how_it_ended(proc.returncode)}) before the test ended; "
                "the rest of the lesson was graded in a fresh process."
                + (f" Its last words: {last}" if last else "")
            )
            self._set(current, Result("failed", message))
            pending.remove(current)
        elif pending:  # ended without starting them: nothing a fresh child would do better
            why = f"the grader's process for this lesson ended ({_how_it_ended(proc.returncode)}) before running it"
            for nodeid in pending:
                self._set(
                    nodeid, Result("failed", f"{why}: {_tail(log_path) or '(no output)'}", scope="lesson")
                )
            return []
        return pending

    def _after_timeout(self, phase, current, pending, lesson, log_path):
        if phase == "import":
            message = (
                f"importing {grading.target_label()}{lesson}.py did not finish within {self.limit:.0f} s and was "
                "stopped: code at module level (outside any function) that never ends? Every exercise of this "
                "lesson scores 0 until it imports."
            )
        elif phase == "test":
            self._set(
                current,
                Result(
                    "failed",
                    f"timed out after {self.limit:.0f} s and was stopped: a loop whose bound never changes, or a "
                    "cuda.syncthreads() that some threads of the block never reach? The rest of the lesson was "
                    "graded in a fresh process (--grade-timeout S changes the limit).",
                ),
            )
            pending.remove(current)
            return pending
        else:
            message = (
                f"the grader's process for this lesson did not start: {_tail(log_path) or '(no output)'}"
            )
        for nodeid in pending:
            self._set(nodeid, Result("failed", message, scope="lesson"))
        return []


def _kill(proc):
    """End the child and everything it started (a compiler, say): the process group it leads."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        if proc.poll() is None:
            proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


# ---------------------------------------------------------------------------------------------------------
# The zygote: import once, fork a child per lesson
# ---------------------------------------------------------------------------------------------------------
def zygote_main():
    """The zygote process: import what every child needs, then fork one pytest per request read on stdin."""
    import numpy  # noqa: F401
    import pytest
    import torch  # noqa: F401

    import course.warp  # noqa: F401
    import minisd.model  # noqa: F401
    from minisd.kernel_backend import cuda  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    pending = b""
    while True:
        if select.select([0], [], [], POLL_S)[0]:
            chunk = os.read(0, 1 << 16)  # raw reads: a buffered readline could hide a second request
            if not chunk:
                return  # the parent is gone
            pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            job = json.loads(line)
            pid = os.fork()
            if pid == 0:
                os.setsid()  # its own process group: killing it kills all it starts
                null, log = os.open(os.devnull, os.O_RDONLY), os.open(job["log"], os.O_WRONLY | os.O_CREAT)
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                code = 3
                try:
                    code = int(pytest.main(job["args"]))
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            print(json.dumps({"tag": job["tag"], "pid": pid}), flush=True)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            print(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}), flush=True)


class Zygote:
    """The parent's handle on the zygote: ``spawn`` returns a child that quacks like a subprocess.Popen."""

    def __init__(self):
        code = (
            f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(HERE)!r}]; import grader; grader.zygote_main()"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._cond = threading.Condition()
        self._pids, self._exits = {}, {}
        self.ready = False
        self.alive = True
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library's chatter
            with self._cond:
                if "ready" in msg:
                    self.ready = True
                elif "pid" in msg:
                    self._pids[msg["tag"]] = msg["pid"]
                elif "exit" in msg:
                    self._exits[msg["exit"]] = msg["code"]
                self._cond.notify_all()
        with self._cond:
            self.alive = False
            self._cond.notify_all()

    def spawn(self, args, log_path):
        """A forked child running ``pytest args`` with its output in ``log_path``; None if the zygote is gone."""
        tag = f"{time.monotonic_ns()}-{threading.get_ident()}"
        with self._cond:
            if not self._cond.wait_for(lambda: self.ready or not self.alive, STARTUP_S) or not self.alive:
                return None
            try:
                self.proc.stdin.write(json.dumps({"tag": tag, "args": args, "log": str(log_path)}) + "\n")
                self.proc.stdin.flush()
            except OSError:
                return None
            if not self._cond.wait_for(lambda: tag in self._pids or not self.alive, STARTUP_S):
                return None
            return Forked(self, self._pids.pop(tag)) if tag in self._pids else None

    def exit_code(self, pid):
        with self._cond:
            if pid in self._exits:
                return self._exits.pop(pid)
            if self.alive:
                return None
        try:  # the zygote died and cannot tell: the child has ended when its pid is gone
            os.kill(pid, 0)
            return None
        except ProcessLookupError:
            return -signal.SIGKILL

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Forked:
    """A child forked by the zygote, with the part of subprocess.Popen's interface the grader uses."""

    def __init__(self, zygote, pid):
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self):
        if self.returncode is None:
            self.returncode = self.zygote.exit_code(self.pid)
        return self.returncode

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout=None):
        end = time.monotonic() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            if time.monotonic() > end:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(POLL_S)
        return self.returncode
