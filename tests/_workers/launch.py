"""Helpers for tests that run the worker scripts in this folder as subprocesses.

Every subprocess gets the repository on PYTHONPATH, quiet TensorFlow, the TensorFlow backend and a
hard timeout, so that a hung worker fails its test instead of hanging the suite.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

WORKERS = Path(__file__).resolve().parent
# Generous: a worker imports TensorFlow and trains on a loaded 2-core CI machine, possibly next to
# another pytest-xdist worker. Only a hung worker ever reaches it.
TIMEOUT = 600
REPO = WORKERS.parent.parent


def worker_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["KERAS_BACKEND"] = "tensorflow"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start(script, *args, **env):
    """Popen `python tests/_workers/<script> args...`, stdout piped line by line, stderr merged."""
    return subprocess.Popen(
        [sys.executable, str(WORKERS / script), *map(str, args)],
        cwd=REPO,
        env=worker_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run(script, *args, timeout=TIMEOUT, **env):
    """Run a worker to completion; raise AssertionError with its output if it fails."""
    process = start(script, *args, **env)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"{script} timed out after {timeout}s:\n{output[-4000:]}")
    if process.returncode != 0:
        raise AssertionError(f"{script} exited with {process.returncode}:\n{output[-4000:]}")
    return output


def free_loopback_ports(count):
    """`count` distinct free TCP ports on 127.0.0.1 (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_line(process, marker, timeout=TIMEOUT):
    """Read `process`'s output until a line equal to `marker`; return the lines read.

    Raises AssertionError (after killing the process) if the process exits or `timeout` seconds
    pass first. A reader thread keeps a hung worker from hanging the test.
    """
    lines, found = [], threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if line.strip() == marker:
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found.is_set():
        process.kill()
        process.wait()
        raise AssertionError(f"no {marker!r} line within {timeout}s:\n{''.join(lines)[-4000:]}")
    return lines


def kill_hard(process):
    """SIGKILL, as a crash, the OOM killer or a preempted machine would; no clean-up runs."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL, process.returncode
