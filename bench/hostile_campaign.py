"""A campaign of hostile inputs against every verb of the CLI and the Python API.

Each case feeds one damaged or unexpected input to one surface and states what a user is owed:

- ``fail``: a non-zero exit code other than 1 (1 is the last-resort "failed unexpectedly" line), exactly one
  ``foveal: error:`` line holding the given words, no traceback, and every listed earlier output byte-for-byte intact;
- ``partial``: exit 0, the good inputs predicted and counted, each bad input named on stderr;
- ``ok``: exit 0 (a legal input that looks odd);
- ``raises``: the API raises ``foveal.FovealError`` (never ``TypeError``, ``KeyError`` ...);
- ``warns``: exit 0 and the warning's words on stderr.

Outcomes are ``clean`` (as owed) or one of ``false_success``, ``bug`` (exit 1 or a raw exception), ``traceback``,
``changed_output``, ``silent`` (a bad input not named), ``message`` (a clean failure whose words miss the point) and
``hang``. The table per kind goes to ``bench/results/hostile_campaign.json`` with the machine's environment.

Usage: ``python bench/hostile_campaign.py [--keep DIR] [--only SUBSTRING]`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from _common import environment
from foveal.cli import main
from foveal.errors import FovealError
from hostile_cases import KINDS, build_cases

RESULTS = Path(__file__).resolve().parent / "results" / "hostile_campaign.json"
CASE_SECONDS = 240


@dataclass
class Case:
    """One hostile input: ``kind`` (a key of KINDS), the verb, a name, and what is owed (see the module's text)."""

    kind: str
    verb: str
    name: str
    expect: str
    argv: list[str] | None = None
    call: Callable[[], Any] | None = None
    needles: tuple[str, ...] = ()
    intact: tuple[Path, ...] = ()
    bad: tuple[str, ...] = ()
    check: Callable[[str, str], str | None] | None = None
    setup: Callable[[], None] | None = None


@dataclass
class Outcome:
    case: Case
    verdict: str
    code: int | None = None
    err: str = ""
    seconds: float = 0.0
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def snapshot(path: Path) -> dict[str, bytes]:
    if not path.exists():
        return {}
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def judge_cli(case: Case, code: int, out: str, err: str) -> tuple[str, str]:
    text = err.strip()
    if "Traceback" in err or "Traceback" in out:
        return "traceback", text[-300:]
    if case.expect == "fail":
        if code == 0:
            return "false_success", (out.strip().splitlines() or [""])[-1][:200]
        if code == 1:
            return "bug", text[:300]
        lines = [line for line in text.splitlines() if line.startswith("foveal: error:")]
        if len(lines) != 1:
            return "message", f"{len(lines)} error lines: {text[:300]}"
        missing = [n for n in case.needles if n.lower() not in lines[0].lower()]
        if missing:
            return "message", f"missing {missing}: {lines[0][:300]}"
        return "clean", lines[0][:300]
    if code != 0:
        return ("bug" if code == 1 else "false_failure"), text[:300]
    if case.expect == "partial":
        missing = [b for b in case.bad if b not in err]
        if missing:
            return "silent", f"not named on stderr: {missing}"
    if case.expect == "warns":
        missing = [n for n in case.needles if n.lower() not in err.lower()]
        if missing:
            return "silent", f"no warning {missing}: {text[:200]}"
    if case.check is not None:
        problem = case.check(out, err)
        if problem:
            return "silent", problem
    return "clean", (text or out.strip())[-200:]


def run_case(case: Case) -> Outcome:
    started = time.perf_counter()
    if case.setup is not None:
        case.setup()
    before = {p: snapshot(p) for p in case.intact}
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        if case.argv is not None:
            code, out, err = run_cli(case.argv)
            verdict, detail = judge_cli(case, code, out, err)
        else:
            code, err = None, ""
            assert case.call is not None
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as e:
                    case.call()
                err = e.getvalue()
                if case.expect == "raises":
                    verdict, detail = "false_success", "returned without an error"
                else:
                    verdict, detail = "clean", ""
                    if case.check is not None:
                        problem = case.check("", err)
                        if problem:
                            verdict, detail = "silent", problem
            except FovealError as exc:
                verdict = "clean" if case.expect == "raises" else "false_failure"
                detail = str(exc)[:300]
                missing = [n for n in case.needles if n.lower() not in detail.lower()]
                if verdict == "clean" and missing:
                    verdict, detail = "message", f"missing {missing}: {detail}"
            except _Timeout:
                raise
            except Exception as exc:
                verdict, detail = "bug", f"{type(exc).__name__}: {str(exc)[:250]}"
    except _Timeout:
        verdict, code, err, detail = "hang", None, "", f"no answer in {CASE_SECONDS} s"
    except Exception:
        verdict, code, err, detail = "bug", None, "", traceback.format_exc()[-300:]
    finally:
        signal.alarm(0)
    if verdict == "clean":
        for path, was in before.items():
            if snapshot(path) != was:
                verdict, detail = "changed_output", f"{path} changed"
                break
    return Outcome(case, verdict, code, err, time.perf_counter() - started, detail)


def main_campaign(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    parser.add_argument("--only", help="run the cases of this verb or kind, or whose name holds this text")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("FOVEAL_WORKERS", "0")
    work = Path(args.keep) if args.keep else Path(os.environ.get("TMPDIR", "/tmp")) / f"foveal-hostile-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    cases = [Case(**c) for c in build_cases(work)]
    if args.only:
        cases = [c for c in cases if args.only in (c.verb, c.kind) or args.only in c.name]
    outcomes: list[Outcome] = []
    for i, case in enumerate(cases, 1):
        outcome = run_case(case)
        outcomes.append(outcome)
        mark = "ok " if outcome.verdict == "clean" else "BAD"
        print(
            f"[{i:3d}/{len(cases)}] {mark} {case.kind:<10} {case.verb:<8} {case.name}: {outcome.verdict}"
            + ("" if outcome.verdict == "clean" else f" — {outcome.detail[:160]}"),
            flush=True,
        )
    table: dict[str, dict[str, int]] = {}
    for o in outcomes:
        table.setdefault(o.case.kind, Counter())[o.verdict] += 1  # type: ignore[index]
    totals = Counter(o.verdict for o in outcomes)
    result = {
        "environment": environment(),
        "seconds": round(time.time() - started, 1),
        "cases": len(outcomes),
        "totals": dict(totals),
        "kinds": {k: {"what": KINDS.get(k, k), **dict(v)} for k, v in sorted(table.items())},
        "by_verb": dict(Counter(o.case.verb for o in outcomes)),
        "outcomes": [
            {
                "kind": o.case.kind,
                "verb": o.case.verb,
                "case": o.case.name,
                "expect": o.case.expect,
                "verdict": o.verdict,
                "exit": o.code,
                "seconds": round(o.seconds, 2),
                "detail": o.detail,
            }
            for o in outcomes
        ],
    }
    if not args.only:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({"cases": len(outcomes), "totals": dict(totals)}, indent=1))
    for kind, counts in sorted(table.items()):
        print(f"  {kind:<12} {dict(counts)}")
    return 0 if totals.get("clean", 0) == len(outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main_campaign())
