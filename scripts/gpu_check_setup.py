"""The GPU check's bookkeeping, in the standard library alone (it runs before anything is installed).

Called by ``scripts/gpu_check.sh``, one subcommand per stage:

    skip REASON --out FILE            the JSON of a machine the check does not run on
    install --wheels DIR --report F   make retool importable: the carried wheels of the distributions
                                      this Python lacks (never a newer or older copy of one it has), and
                                      the sandbox's system tools (bwrap, prlimit, their libraries)
                                      where they are missing and we are root
    finish --out FILE ...             merge the driver's JSON, the install report and pytest's JUnit XML
                                      into the one JSON the check writes; exit 1 if anything failed

The wheelhouse is built by ``scripts/make_gpu_wheelhouse.sh`` (its layout: ``*.whl``, ``tokenizer/``,
``sys/``).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

FALLBACK_TARGET = "/tmp/retool-gpu-site"  # where wheels go when this Python's own environment is read-only
SYSTEM_TOOLS = ("bwrap", "prlimit")  # the local jail's programs (retool.sandbox.isolation)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: str | None) -> dict | None:
    try:
        return json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return None


# -- skip ---------------------------------------------------------------------------------------------


def skip(args) -> int:
    write_json(Path(args.out), {"gpu": False, "skipped": args.reason, "device": None, "torch": args.torch or None,
                                "nvidia_smi": _text(args.nvidia_smi), "steps": {}, "pytest": None,
                                "minutes": _minutes(args.started), "ok": None})
    print(f"gpu_check: skipped ({args.reason}); wrote {args.out}")
    return 0


# -- install ------------------------------------------------------------------------------------------


def installed_names() -> set[str]:
    return {canonical(d.metadata["Name"]) for d in metadata.distributions() if d.metadata["Name"]}


def missing_wheels(wheels: Path, have: set[str]) -> list[Path]:
    """One wheel per distribution this Python lacks (the newest, should the folder hold several)."""
    by_name: dict[str, list[Path]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        by_name.setdefault(canonical(wheel.name.split("-")[0]), []).append(wheel)
    return [max(files, key=lambda f: _version_key(f.name.split("-")[1]))
            for name, files in sorted(by_name.items()) if name not in have]


def _version_key(version: str):
    try:
        from packaging.version import Version

        return (0, Version(version))
    except Exception:  # no packaging, or a version it cannot parse: plain order
        return (1, version)


def pip_install(wheels: list[Path]) -> dict:
    base = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
            "--disable-pip-version-check", "-q"]
    done = subprocess.run(base + [str(w) for w in wheels], capture_output=True, text=True)
    if done.returncode == 0:
        return {"into": "this Python's environment", "rc": 0}
    # a read-only or externally managed environment: a folder of our own on PYTHONPATH (the jail's
    # interpreter does not see it, so the jupyter sandbox will not start there; the driver says so)
    again = subprocess.run(base + ["--upgrade", "--target", FALLBACK_TARGET] + [str(w) for w in wheels],
                           capture_output=True, text=True)
    return {"into": FALLBACK_TARGET, "rc": again.returncode, "first_error": _tail(done.stderr),
            "error": _tail(again.stderr) if again.returncode else None, "pythonpath": FALLBACK_TARGET}


def install_system_tools(folder: Path) -> dict:
    """bwrap and prlimit (and the shared libraries beside them) into /usr/local where missing."""
    report: dict = {"installed": [], "missing": []}
    if not folder.is_dir():
        report["missing"] = [t for t in SYSTEM_TOOLS if shutil.which(t) is None]
        return report
    root = os.geteuid() == 0
    known = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout if shutil.which("ldconfig") else ""
    new_libs = False
    for lib in sorted(folder.glob("lib*.so*")):
        if f"{lib.name} " in known or not root:
            continue
        shutil.copy2(lib, Path("/usr/local/lib") / lib.name)
        report["installed"].append(f"/usr/local/lib/{lib.name}")
        new_libs = True
    if new_libs:
        subprocess.run(["ldconfig"], capture_output=True)
    for tool in SYSTEM_TOOLS:
        if shutil.which(tool) is not None:
            continue
        if root and (folder / tool).is_file():
            target = Path("/usr/local/bin") / tool
            shutil.copy2(folder / tool, target)
            target.chmod(0o755)
            report["installed"].append(str(target))
        else:
            report["missing"].append(tool)
    return report


def import_error(env: dict) -> str | None:
    """Why retool's steps cannot be imported by this Python (None: they can)."""
    probe = "import retool.rollout, retool.sandbox.jupyter, retool.training.rl, retool.training.sft, trl"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    return None if done.returncode == 0 else _tail(done.stderr, 600)


def install(args) -> int:
    wheels = Path(args.wheels)
    env = dict(os.environ)
    report: dict = {"python": sys.executable, "wheels_dir": str(wheels), "wheels_dir_exists": wheels.is_dir()}
    started = time.monotonic()
    report["system_tools"] = install_system_tools(wheels / "sys")
    report["import_error_before"] = error = import_error(env)
    pythonpath = None
    if error is not None and wheels.is_dir():
        chosen = missing_wheels(wheels, installed_names())
        report["wheels_installed"] = [w.name for w in chosen]
        if chosen:
            report["pip"] = pip_install(chosen)
            pythonpath = report["pip"].get("pythonpath")
            if pythonpath:
                env["PYTHONPATH"] = f"{pythonpath}:{env.get('PYTHONPATH', '')}"
        report["import_error"] = import_error(env)
        check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, env=env)
        report["pip_check"] = check.stdout.strip().splitlines()[:30]
    else:
        report["import_error"] = error
    report["seconds"] = round(time.monotonic() - started, 1)
    write_json(Path(args.report), report)
    if args.env_file:  # for the shell to source
        Path(args.env_file).write_text(f"export PYTHONPATH={pythonpath}:\"$PYTHONPATH\"\n" if pythonpath else "")
    print(f"gpu_check: install: {len(report.get('wheels_installed', []))} wheels, system tools "
          f"{report['system_tools']['installed'] or 'none'} installed; "
          f"retool {'importable' if report['import_error'] is None else 'NOT importable'} "
          f"({report['seconds']} s)")
    return 0


# -- finish -------------------------------------------------------------------------------------------


def pytest_counts(junit: str | None, rc: int | None, selected: str) -> dict:
    counts: dict = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "rc": rc, "selected": selected}
    try:
        tree = ET.parse(junit) if junit else None
    except (OSError, ET.ParseError) as exc:
        tree = None
        counts["note"] = f"no JUnit report ({type(exc).__name__})"
    if tree is None:
        counts.setdefault("note", "pytest did not run")
        if rc in (124, 137):
            counts["note"] = "pytest ran past its time budget and was stopped"
        return counts
    failures = []
    for case in tree.iter("testcase"):
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        name = f"{case.get('classname')}::{case.get('name')}"
        if outcome is None:
            counts["passed"] += 1
        elif outcome.tag == "skipped":
            counts["skipped"] += 1
        else:
            counts["failed" if outcome.tag == "failure" else "errors"] += 1
            failures.append({"test": name, "message": (outcome.get("message") or "")[:500]})
    counts["failures"] = failures[:10]
    if rc == 5:
        counts["note"] = "no test selected"
    return counts


def finish(args) -> int:
    result = read_json(args.driver) or {"gpu": True, "steps": {}, "error": f"the driver wrote no JSON (rc {args.driver_rc})"}
    if args.driver_rc not in (None, 0):
        result["driver_rc"] = args.driver_rc
        if args.driver_rc in (124, 137):
            result["error"] = f"the driver ran past its time budget and was stopped during {result.get('running')!r}"
    result["install"] = read_json(args.install)
    result["nvidia_smi"] = _text(args.nvidia_smi)
    result["pytest"] = pytest_counts(args.junit, args.pytest_rc, args.selected)
    result["minutes"] = _minutes(args.started)
    steps = result.get("steps", {})
    pytest_ok = result["pytest"]["failed"] == 0 and result["pytest"]["errors"] == 0 and args.pytest_rc in (0, 5)
    result["ok"] = bool(steps) and all(s.get("ok") for s in steps.values()) and pytest_ok and "error" not in result
    write_json(Path(args.out), result)
    for name, step in steps.items():
        extra = step.get("error") or step.get("skipped") or step.get("note") or ""
        print(f"  {name:<16} {'ok  ' if step.get('ok') else 'FAIL'} {step.get('seconds', 0):7.1f} s  {extra}"[:200])
    p = result["pytest"]
    print(f"  pytest           {p['passed']} passed, {p['failed']} failed, {p['errors']} errors, {p['skipped']} skipped"
          f" (rc {p['rc']}{', ' + p['note'] if p.get('note') else ''})")
    print(f"gpu_check: {'all ok' if result['ok'] else 'FAILURES'} in {result['minutes']} min; wrote {args.out}")
    return 0 if result["ok"] else 1


def _minutes(started: float | None) -> float | None:
    return round((time.time() - started) / 60, 2) if started else None


def _text(path: str | None) -> str | None:
    try:
        return Path(path).read_text().strip() or None if path else None
    except OSError:
        return None


def _tail(text: str, n: int = 1500) -> str:
    return text.strip()[-n:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("skip")
    p.add_argument("reason")
    p.add_argument("--out", required=True)
    p.add_argument("--torch", default="")
    p.add_argument("--nvidia-smi")
    p.add_argument("--started", type=float)
    p = sub.add_parser("install")
    p.add_argument("--wheels", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--env-file")
    p = sub.add_parser("finish")
    p.add_argument("--out", required=True)
    p.add_argument("--driver")
    p.add_argument("--driver-rc", type=int)
    p.add_argument("--install")
    p.add_argument("--junit")
    p.add_argument("--pytest-rc", type=int)
    p.add_argument("--selected", default="")
    p.add_argument("--nvidia-smi")
    p.add_argument("--started", type=float)
    args = parser.parse_args(argv)
    return {"skip": skip, "install": install, "finish": finish}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
