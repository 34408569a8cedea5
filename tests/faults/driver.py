"""Run fsdx commands one after another in this process, each with its own injected write failure.

    LD_PRELOAD=failwrite.so python -m tests.faults.driver CASES.json RESULTS.json

A case is {"args": [...], "dir": folder the failure applies to, "after": writes let through first (-1: none
refused, only counted; "half": half of those a clean run makes, counted first in DIR-count), "errno": 28 or 30}.
A result is the exit code, what the command printed, the traceback
if one escaped `fsdx`, and how many writes under the folder went through and were refused. One process for all
cases: torch and diffusers are imported once.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import sys
import traceback

from fashionsd_x.cli import main


def run(case: dict) -> dict:
    if case["after"] == "half":
        clean = case["dir"] + "-count"
        counted = run({**case, "args": [arg.replace(case["dir"], clean) for arg in case["args"]], "dir": clean,
                       "after": -1})
        return {**run({**case, "after": counted["done"] // 2}), "clean": counted}
    os.environ.update({"FSDX_FAULT_DIR": case["dir"], "FSDX_FAULT_AFTER": str(case["after"]),
                       "FSDX_FAULT_ERRNO": str(case.get("errno", 28))})
    shim = ctypes.CDLL(None)  # the preloaded library's counters, found among this process's symbols
    shim.fsdx_fault_writes_done.restype = shim.fsdx_fault_writes_refused.restype = ctypes.c_long
    stdout, stderr = io.StringIO(), io.StringIO()
    code, crash = None, ""
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(case["args"])
        except SystemExit as exit:
            code = exit.code
        except BaseException:  # noqa: BLE001 - what escaped fsdx is the finding
            crash = traceback.format_exc()
    result = {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "crash": crash,
              "done": shim.fsdx_fault_writes_done(), "refused": shim.fsdx_fault_writes_refused()}
    os.environ["FSDX_FAULT_DIR"] = "/nonexistent-fault-dir"  # stop counting between cases
    return result


if __name__ == "__main__":
    cases = json.loads(open(sys.argv[1], encoding="utf-8").read())
    results = [run(case) for case in cases]
    with open(sys.argv[2], "w", encoding="utf-8") as handle:
        json.dump(results, handle)
