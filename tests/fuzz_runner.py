"""Runs `scalereg.cli.main` on many argument lists, each in a child process forked from
this one, and reports for each its exit code, wall time, peak memory and output.

Used by tests/test_fuzz_inputs.py: ``python fuzz_runner.py CASES.json RESULTS.json``.
A fresh interpreter that has imported the CLI (nothing else: no threads, no event
loops) forks once per case, so a case costs milliseconds instead of an interpreter's
start, and each child's peak resident memory is its own (from wait4).  A child that
runs longer than the case's timeout is killed and reported as such.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # no thread pool to fork beside

import scalereg.cli  # noqa: E402 - imported once, before any fork (as are the readers' libraries)
import scalereg.convert.plan_conversion  # noqa: E402, F401
import scalereg.io.itk_source  # noqa: E402, F401
import scalereg.io.nifti_source  # noqa: E402, F401
import scalereg.io.tiff_source  # noqa: E402, F401
import scalereg.transforms.transform_points  # noqa: E402, F401


def run_case(case: dict, directory: str) -> dict:
    out, err = os.path.join(directory, "stdout"), os.path.join(directory, "stderr")
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: the command, its output in files
        code = 1
        try:
            os.chdir(directory)
            for fd, path in ((1, out), (2, err)):
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(handle, fd)
                os.close(handle)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            code = scalereg.cli.main(case["argv"])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported as the traceback it printed
            import traceback

            traceback.print_exc()
            code = 99
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = start + case.get("timeout", 20.0)
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.005)
    seconds = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    return {
        **case,
        "exit": "timeout" if seconds > case.get("timeout", 20.0) and code == -signal.SIGKILL else code,
        "seconds": round(seconds, 3),
        "max_rss_bytes": usage.ru_maxrss * 1024,
        "stdout": open(out, errors="replace").read()[-4000:],
        "stderr": open(err, errors="replace").read()[-4000:],
    }


def main() -> None:
    cases_path, results_path = sys.argv[1], sys.argv[2]
    cases = json.loads(open(cases_path).read())
    results = []
    for case in cases:
        directory = case["directory"]
        os.makedirs(directory, exist_ok=True)
        results.append(run_case(case, directory))
    with open(results_path, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
