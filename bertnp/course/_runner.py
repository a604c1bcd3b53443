"""One task's tests in one process: the grader starts ``python -I _runner.py`` for every task.

This file is run as a script from a copy in the grader's private folder, never imported from the
submission's package. It reads its job (JSON) from standard input before any submission code runs:

    {"package_root": folder holding the bertnp package to test,
     "tests_root": folder holding the grading tests (the instructor's copy),
     "node_ids": ["public/test_a1_ops.py::test_layernorm_backward", ...],
     "result": path of the result file, "nonce": a random string,
     "referee_teach": the instructor's bertnp/teach.py (the gradient referee), "task": "1.3"}

It runs pytest on exactly those node ids, with the grader's own configuration (no submission
conftest, ini file, cache or plugin can take part), and writes the result file -- only at the end
of the session, with the nonce -- so a process that exits early, by os._exit or sys.exit or a
crash, leaves no result and counts as failed.
"""
import json
import os
import sys

LIMIT = 4000          # characters of feedback kept per test


def _tail(text, limit=LIMIT):
    text = str(text)
    return text if len(text) <= limit else text[:limit // 4] + "\n...\n" + text[-(3 * limit) // 4:]


def main():
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, job["tests_root"])
    sys.path.insert(0, job["package_root"])
    os.environ["BERTNP_COURSE_REFEREE_TEACH"] = job.get("referee_teach", "")
    os.environ["BERTNP_COURSE_TASK"] = job.get("task", "")
    import pytest

    outcomes = {}
    order = []

    class Recorder:
        def pytest_runtest_logreport(self, report):
            key = report.nodeid
            if key not in outcomes:
                order.append(key)
                outcomes[key] = {"outcome": "passed", "text": ""}
            entry = outcomes[key]
            if report.failed:
                entry["outcome"] = "failed" if report.when == "call" else "error"
                entry["text"] += _tail(_longrepr(report))
            elif report.skipped and entry["outcome"] == "passed":
                entry["outcome"] = "skipped"
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
                entry["text"] += _tail(reason)

        def pytest_collectreport(self, report):
            if report.failed:
                order.append(report.nodeid or "collection")
                outcomes[report.nodeid or "collection"] = {"outcome": "error", "text": _tail(_longrepr(report))}

        def pytest_sessionfinish(self, session, exitstatus):
            where = ""
            try:
                import bertnp
                where = os.path.dirname(os.path.dirname(os.path.abspath(bertnp.__file__)))
            except BaseException as exc:          # the package does not even import: say so
                where = f"(bertnp does not import: {type(exc).__name__}: {exc})"
            result = {"nonce": job["nonce"], "finished": True, "exitstatus": int(exitstatus),
                      "package": where, "tests": [dict(nodeid=k, **outcomes[k]) for k in order]}
            tmp = job["result"] + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(result, f)
            os.replace(tmp, job["result"])

    args = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:xdist", "-p", "no:nbmake",
            "--rootdir", job["tests_root"], "-c", os.path.join(job["tests_root"], "pytest.ini"),
            "--confcutdir", job["tests_root"], "--tb=short", "-o", "console_output_style=classic",
            "--no-header", "-W", "ignore::DeprecationWarning"]
    args += [os.path.join(job["tests_root"], node) for node in job["node_ids"]]
    code = pytest.main(args, plugins=[Recorder()])
    sys.stdout.flush()
    os._exit(0 if code in (0, 1) else 3)      # no atexit handler of the submission runs after us


def _longrepr(report):
    """The exception's message and where it was raised (not the test's source: hidden tests stay hidden)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = f"{crash.message}\n  (raised at {crash.path}:{crash.lineno})"
    else:
        try:
            text = report.longreprtext
        except Exception:
            text = str(report.longrepr)
    for name, content in getattr(report, "sections", []):
        if "stdout" in name or "stderr" in name:
            text += f"\n--- {name} ---\n{_tail(content, 1500)}"
    return text


if __name__ == "__main__":
    main()
