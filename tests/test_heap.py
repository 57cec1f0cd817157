"""scalereg.heap: in a process started as Dask's nanny starts workers (an explicit
MALLOC_TRIM_THRESHOLD_), mid-size arrays come from the heap inside
heap_for_mid_size_allocations (no page faults once warm), and are mapped afresh
outside it (page faults on every allocation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, resource
import numpy as np
from scalereg.heap import heap_for_mid_size_allocations

def faults(repeats=200):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        block = np.empty(4 * 2**20, np.uint8)  # 4 MiB, like an image of a SyN iteration
        block.fill(1)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

outside = faults()
with heap_for_mid_size_allocations():
    faults(5)  # warm: the heap grows once
    inside = faults()
after = faults()
print(json.dumps({"outside": outside, "inside": inside, "after": after}))
"""


def _probe(environment: dict[str, str]) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**env, **environment}, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_mid_size_allocations_come_from_the_heap_inside_and_are_mapped_outside():
    faults = _probe({"MALLOC_TRIM_THRESHOLD_": "65536"})  # what the nanny gives workers
    assert faults["outside"] > 200  # every 4 MiB array mapped and faulted in afresh
    assert faults["inside"] < faults["outside"] / 10
    assert faults["after"] > faults["outside"] / 2  # the worker's own setting is back


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_processes_with_glibc_defaults_are_left_alone():
    faults = _probe({})  # adaptive: the first array is mapped, the next ones come from the heap
    assert faults["outside"] < 2 * 1024 and faults["inside"] < 200 and faults["after"] < 200


ARENAS_PROBE = """
import ctypes, json, os, re, tempfile, threading
import numpy as np
from scalereg.heap import share_malloc_arenas

libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]

def arenas():
    path = tempfile.mktemp()
    stream = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    with open(path) as report:
        text = report.read()
    os.unlink(path)
    return len(re.findall(r'<heap nr="', text))

def threads_allocating(count=6):
    ready, done = threading.Barrier(count + 1), threading.Event()
    def work():
        block = np.ones(2**18)  # 2 MiB, from the thread's arena
        ready.wait()
        done.wait()
        del block
    started = [threading.Thread(target=work) for _ in range(count)]
    for thread in started:
        thread.start()
    ready.wait()
    seen = arenas()
    done.set()
    for thread in started:
        thread.join()
    return seen

before = threads_allocating(3)
share_malloc_arenas(int(os.environ["LIMIT"]))
after = threads_allocating(6)
print(json.dumps({"before": before, "after": after}))
"""


def _arenas(environment: dict[str, str]) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", ARENAS_PROBE], env={**env, **environment},
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_worker_threads_share_a_limited_number_of_arenas():
    arenas = _arenas({"MALLOC_TRIM_THRESHOLD_": "65536", "LIMIT": "3"})
    assert arenas["before"] >= 4  # three threads at once: an arena each, and the main one
    assert arenas["after"] == arenas["before"]  # six threads at once: no new arena beyond the limit...
    # ...the ones that exist are shared (glibc counts those already made against the limit)
    plain = _arenas({"LIMIT": "3"})  # glibc defaults: a process not started as a worker
    assert plain["after"] >= 7  # left alone: six threads, six arenas (plus main)
