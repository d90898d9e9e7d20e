"""The pass/fail bookkeeping the scripts' checks share (check_chart.py, smoke_image.py): each
check prints one `ok`/`FAIL` line, and `summary` prints the total and gives the exit status."""

from __future__ import annotations

failures: list[str] = []
passed = 0


def ok(line: str) -> None:
    global passed
    passed += 1
    print(f"  ok    {line}")


def bad(line: str) -> None:
    failures.append(line)
    print(f"  FAIL  {line}")


def check(cond: bool, line: str) -> None:
    (ok if cond else bad)(line)


def summary(what: str) -> int:
    """Prints `<what> passed: N of N` or `<what> FAILED: K of N failed`; 0 or 1 to exit with."""
    total = passed + len(failures)
    if failures:
        print(f"{what} FAILED: {len(failures)} of {total} failed")
        return 1
    print(f"{what} passed: {passed} of {total}")
    return 0
