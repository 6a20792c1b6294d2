"""``-p tests.cputime`` counts each test file's CPU, its own and its processes'."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUSY = """
import subprocess, sys, time

def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

def test_in_pytest():
    spin(0.4)

def test_in_a_child():
    subprocess.run([sys.executable, "-c", "import time\\nend = time.process_time() + 0.6\\n"
                    "while time.process_time() < end: pass"], check=True)

def test_idle():
    time.sleep(0.3)
"""


def test_each_files_cpu_is_counted_in_pytest_and_in_the_processes_it_started(tmp_path: Path):
    (tmp_path / "test_busy.py").write_text(BUSY)
    (tmp_path / "test_idle.py").write_text("def test_nothing():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AETHER_CPUTIME_RECORDS", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "--disable-plugin-autoload",  # no other plugin: a run of three small tests
            "-p",
            "tests.cputime",
            "-p",
            "no:cacheprovider",
            "-c",
            os.devnull,
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {
        m["file"]: (float(m["own"]), float(m["started"]), int(m["tests"]))
        for m in re.finditer(
            r"^\s*[\d.]+\s+(?P<own>[\d.]+)\s+(?P<started>[\d.]+)\s+(?P<tests>\d+)\s+(?P<file>\S+)$",
            done.stdout,
            re.M,
        )
    }
    own, started, tests = rows["test_busy.py"]
    assert tests == 3
    assert own >= 0.35, done.stdout  # the spin in pytest's own process
    assert started >= 0.5, done.stdout  # the child's spin, once it was waited for
    assert rows["test_idle.py"][0] < 0.2, done.stdout
    assert re.search(r"^run: \d+ s of CPU in \d+ s", done.stdout, re.M), done.stdout
