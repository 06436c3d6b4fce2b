"""The ``dlarena`` command. Imports stay inside the commands so that ``dlarena --help`` is instant."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from dlarena import __version__
from dlarena.errors import DlarenaError, unknown
from dlarena.frameworks.registry import precision_support
from dlarena.plan.cell import COMPILE_CACHES, DENORMAL_MODES
from dlarena.wording import counted

DB_HELP = "results database (default: $DLARENA_DB, else results/dlarena.db under the current folder)"


def _names(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _positive_ints(what: str) -> Any:
    def parse(text: str) -> list[int]:
        values = []
        for item in _names(text):
            if not item.isdigit() or int(item) < 1:
                raise argparse.ArgumentTypeError(f"{what} must be positive integers separated by commas, got {item!r}")
            values.append(int(item))
        if not values:
            raise argparse.ArgumentTypeError(f"give at least one {what[:-1]}")
        return values
    return parse


def _positive_int(what: str) -> Any:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{what} must be a positive integer, got {text!r}")
        return int(text)
    return parse


def _threads(text: str) -> list[int] | str:
    return text.strip() if text.strip() in ("all", "max") else _positive_ints("thread counts")(text)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a target accuracy is a fraction in (0, 1], such as 0.97; got {text!r}")
    return value


def _share(option: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 <= value < 1:
            raise argparse.ArgumentTypeError(f"{option} is a share of the median from 0 (off) to below 1, such as"
                                             f" 0.03 for 3%; got {text!r}")
        return value
    return parse


def _print(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    _write_files(output.parent, {output.name: text.encode("utf-8")})
    print(f"wrote {output}", file=sys.stderr)


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Each file whole or not at all: written beside its place under a temporary name, then renamed."""
    written: list[Path] = []
    # mkstemp creates its file for the owner alone; the finished file gets what the user's umask allows.
    umask = os.umask(0)
    os.umask(umask)
    try:
        if folder.exists() and not folder.is_dir():
            raise DlarenaError(f"cannot write into {folder}: it is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial")
            written.append(Path(temporary))
            with os.fdopen(handle, "wb") as stream:
                stream.write(content)
            os.chmod(temporary, 0o666 & ~umask)
        for partial, name in zip(written, files, strict=True):
            os.replace(partial, folder / name)
    except OSError as error:
        for partial in written:
            partial.unlink(missing_ok=True)
        target = folder / next(iter(files)) if len(files) == 1 else folder
        raise DlarenaError(f"cannot write {target}: {error.strerror or error}") from None


# Where a run's cells run (orchestrate/executor.py, orchestrate/ray_executor.py).
EXECUTORS = ("local", "ray")
_SELECTION = ("frameworks", "workloads", "scenarios", "devices", "precision", "threads", "batch_sizes", "timeout",
              "repetitions", "memory_limit", "epochs", "target_accuracy", "compile_cache", "denormals", "target_ci",
              "max_processes", "time_budget", "replicas")


def _placement(args: argparse.Namespace) -> Any:
    """Where the run's cells go: None on this machine, else the Ray cluster's Placement."""
    if args.executor != "ray":
        given = [option for option, value in (("--address", args.address), ("--nodes", args.nodes),
                                              ("--spread", args.spread or None)) if value is not None]
        if given:
            raise DlarenaError(f"{given[0]} chooses Ray nodes: it goes with --executor ray")
        return None
    from dlarena.orchestrate.ray_executor import Placement, parse_selector

    return Placement(args.address, parse_selector(args.nodes) if args.nodes else {}, args.spread)


def cmd_run(args: argparse.Namespace) -> int:
    from dlarena import api

    cluster = _placement(args)
    if args.resume is not None:
        given = [f"--{name.replace('_', '-')}" for name in _SELECTION if getattr(args, name) is not None]
        if given or args.suite is not None:
            raise DlarenaError(f"--resume runs the cells the run already has; it takes no {(given or ['--suite'])[0]}")
        if cluster is not None and (cluster.selector or cluster.spread):
            raise DlarenaError("--resume runs the cells on the nodes the run chose; it takes no --nodes or --spread")
        summary = api.resume(None if args.resume == "latest" else args.resume, db=args.db, argv=sys.argv,
                             progress=not args.quiet, wait=not args.no_wait, allow_changes=args.allow_changes,
                             cluster=cluster)
        return _finished(summary, args.db, resumed=True)
    if args.allow_changes:
        raise DlarenaError("--allow-changes goes with --resume")
    suite = api.select(
        args.suite or "quick", frameworks=args.frameworks, workloads=args.workloads, scenarios=args.scenarios,
        devices=args.devices, precisions=args.precision, batch_sizes=args.batch_sizes, threads=args.threads,
        timeout_s=args.timeout, repetitions=args.repetitions, memory_limit_gib=args.memory_limit,
        epochs=args.epochs, target_accuracy=args.target_accuracy, compile_cache=args.compile_cache,
        denormals=args.denormals, target_ci=args.target_ci, max_processes=args.max_processes,
        time_budget_s=args.time_budget, replicas=args.replicas,
    )
    summary = api.run(suite, db=args.db, argv=sys.argv, progress=not args.quiet, wait=not args.no_wait,
                      cluster=cluster)
    return _finished(summary, args.db)


# `dlarena run` exits with this when the run ended and not one cell was measured (every cell
# unavailable, unsupported or failed): a script must not take it for a result. 1, as `verify` when
# a pair disagrees; 2 is a mistake in the command, 130 a Ctrl-C.
NOTHING_MEASURED_EXIT = 1


def _finished(summary: Any, db: Path | None, resumed: bool = False) -> int:
    """Say how the run ended, in one line that the user can act on; the exit status."""
    from dlarena.report.units import format_duration
    from dlarena.wording import counted

    run_id = summary.run_id
    where = f" --db {shlex.quote(str(db))}" if db is not None else ""  # following the hint must find the run
    report = f"`dlarena report{f' --run {run_id}' if resumed else ''}{where}`"
    cells = _by_status(summary.counts)
    cells = f"{counted(sum(summary.counts.values()), 'cell')}{': ' + cells if cells else ''}"
    if summary.nothing_to_resume:
        print(f"run {run_id} has nothing to resume ({cells}); see it with {report}", file=sys.stderr)
        return 0
    elapsed = format_duration(summary.elapsed_s)
    if summary.interrupted:
        cut = summary.processes.get("interrupted", 0)
        finished = {status: count for status, count in summary.processes.items() if status != "interrupted"}
        statuses = _by_status(finished)
        print(f"run {run_id} interrupted after {elapsed}: {counted(sum(finished.values()), 'process')} finished"
              f"{f' ({statuses})' if statuses else ''} and stored, {cut} interrupted, {summary.not_started} not"
              f" started; `dlarena run --resume {run_id}{where}` runs the {cut + summary.not_started} left",
              file=sys.stderr)
        return 130
    reason = summary.unmeasured()
    if reason:
        print(f"dlarena: run {run_id}: {reason}; see {report}", file=sys.stderr)
        return NOTHING_MEASURED_EXIT
    print(f"run {run_id} finished in {elapsed}, {cells}; see it with {report}", file=sys.stderr)
    return 0


def _by_status(counts: dict[str, int]) -> str:
    """``3 ok, 1 failed``: ok first, then the most frequent."""
    ordered = sorted(counts.items(), key=lambda item: (item[0] != "ok", -item[1], item[0]))
    return ", ".join(f"{count} {status}" for status, count in ordered)


def cmd_runs(args: argparse.Namespace) -> int:
    from dlarena import api

    runs = api.runs(args.db)
    if args.json:
        print(json.dumps(runs, indent=1))
        return 0
    rows = [["run", "suite", "started (UTC)", "status", "processes", "cells"]] + [
        [run["id"], f"{run['suite']} v{run['suite_version']}", run["started_at"].replace("T", " ")[:19],
         run["status"] + (f" (resumed {run['resumes']}x)" if run["resumes"] else ""),
         f"{run['processes_finished']}/{run['processes_planned']}", _by_status(run["cells"])]
        for run in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                    for row in rows))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from dlarena import api

    checks = api.verify(frameworks=args.frameworks, workloads=args.workloads, full=args.full, db=args.db,
                        on_check=None if args.quiet else _print_check,
                        on_progress=None if args.quiet else _print_progress,
                        wait=not args.no_wait, progress=not args.quiet, precision=args.precision)
    print(api.verify_table(checks))
    disagreements = [c for c in checks if c.status not in ("ok", "unsupported", "unavailable")]
    if disagreements:
        print(f"{len(disagreements)} of {counted(len(checks), 'pair')} disagree or failed;"
              " their timings are marked invalid",
              file=sys.stderr)
        return 1
    return 0


def cmd_capabilities(args: argparse.Namespace) -> int:
    from dlarena import api
    from dlarena.report.capabilities import matrix

    def said(answer: Any) -> None:
        figure = f" {answer.message}" if answer.message else ""
        print(f"{answer.framework} {answer.probe}: {answer.outcome}{figure}"[:300], file=sys.stderr)

    start = time.monotonic()
    answers = api.capabilities(frameworks=args.frameworks, probes=args.probes, db=args.db,
                               on_answer=None if args.quiet or args.json else said, wait=not args.no_wait,
                               progress=not args.quiet)
    if not args.quiet:
        frameworks = len({answer["framework"] for answer in answers})
        print(f"{len(answers)} answers from {frameworks} frameworks in {time.monotonic() - start:.0f} s",
              file=sys.stderr)
    if args.json:
        print(json.dumps(answers, indent=1))
    else:
        print("\n".join(matrix(answers, args.frameworks, args.probes)))
    return 0


def _print_progress(line: str) -> None:
    print(line, file=sys.stderr)


def _print_check(check: Any) -> None:
    print(f"{check.workload} {check.framework}: {check.status}{': ' + check.message if check.message else ''}",
          file=sys.stderr)


# `dlarena list frameworks`: the widths of its name and status columns, and the width its second lines
# (which studies named a framework, why one is unavailable) wrap at, a terminal's customary 100.
_NAME_WIDTH = 18
_STATUS_WIDTH = 15
_LISTING_WIDTH = 100


def _framework_lines(items: list[dict[str, Any]]) -> list[str]:
    """One line per framework (name, status, what it is), then indented: which studies named it, and
    why it is unavailable or how to set it up."""
    from dlarena.frameworks.studies import named_by

    indent = " " * (_NAME_WIDTH + _STATUS_WIDTH)
    lines = [f"{'framework':<{_NAME_WIDTH}}{'status':<{_STATUS_WIDTH}}what it is; which studies named it"]
    for item in items:
        versions = f" ({', '.join(f'{k} {v}' for k, v in item['versions'].items())})" if item["versions"] else ""
        lines.append(f"{item['name']:<{_NAME_WIDTH}}{item['status']:<{_STATUS_WIDTH}}{item['description']}{versions}")
        details = [f"named by {named}" for named in [named_by(item["name"])] if named]
        details += [f"why: {item['reason']}"] if item.get("reason") else []
        details += [f"set up: {item['setup']}"] if item.get("setup") else []
        for detail in details:
            lines += textwrap.wrap(detail, _LISTING_WIDTH, initial_indent=indent, subsequent_indent=indent + "  ",
                                   break_on_hyphens=False)
    return lines


def cmd_list(args: argparse.Namespace) -> int:
    items: list[dict[str, Any]]
    if args.what == "frameworks":
        from dlarena.frameworks.studies import framework_rows

        items = framework_rows()
        lines = _framework_lines(items)
    elif args.what == "workloads":
        from dlarena.spec.catalogue import CATALOGUE

        items = [
            {"name": w.name, "study": w.study, "title": w.title, "params": w.params,
             "published_params": w.published_params, "variant_of": w.variant_of,
             "default_batch_size": w.default_batch_size,
             "forward_flops_per_sample": w.flops("infer", 1), "train_flops_per_sample": w.flops("train", 1),
             "recipe": w.recipe.describe(), "citation": w.citation, "notes": w.notes,
             "quirks_not_copied": list(w.quirks_not_copied),
             "training": dataclasses.asdict(w.training) if w.training else None}
            for w in CATALOGUE.values()
        ]
        lines = [f"{'name':<22} {'study':<13} {'params':>13} {'GFLOP fwd/sample':>17}  {'trains on':<9}  title"] + [
            f"{item['name']:<22} {item['study']:<13} {item['params']:>13,} "
            f"{item['forward_flops_per_sample'] / 1e9:>17.4g}  "
            f"{item['training']['dataset'] if item['training'] else '':<9}  {item['title']}"
            for item in items
        ]
    else:
        from dlarena.plan.suite import builtin_suites, parse_suite

        suites = [parse_suite(text, name) for name, text in builtin_suites().items()]
        items = [
            {"name": s.name, "version": s.version, "description": s.description, "cells": len(s.cells())}
            for s in suites
        ]
        width = max((len(item["name"]) for item in items), default=0)
        lines = [f"{item['name']:<{width}}  v{item['version']}  {counted(item['cells'], 'cell'):>10}"
                 f"  {item['description']}" for item in items]
    print(json.dumps(items, indent=1) if args.json else "\n".join(lines))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    action = args.env_action or "show"
    if action == "show":
        return _show_snapshot(args.json)
    from dlarena.environments import manage

    if action == "list":
        rows = manage.status()
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        for row in rows:
            if row["present"]:
                state = (f"present  Python {row['python']}, NumPy {row['numpy']}, {_size(row['size_bytes'])}, "
                         f"created in {row['setup_s']:.0f} s")
            else:
                state = f"absent   ({row['setup_command']})"
            print(f"{row['name']:<8} {state}\n         {row['description']}; frameworks: "
                  f"{', '.join(row['frameworks'])}\n         {row['folder']}")
            for stale in row["stale_folders"]:
                print(f"         older pins, unused: {stale} (`dlarena env remove {row['name']}` deletes all)")
        print(f"\nenvironments folder: {manage.environments_home()} (set ${manage.ENVS_VARIABLE} to move it)")
        return 0
    if action == "setup":
        for name in args.names:  # every name checked before anything is built
            from dlarena.environments import environment_spec

            environment_spec(name)
        for name in args.names:
            manage.setup(name, report=lambda message: print(message, file=sys.stderr))
        return 0
    for name in args.names:
        removed = manage.remove(name)
        print(f"{name}: removed {', '.join(map(str, removed))}" if removed else f"{name}: nothing to remove")
    return 0


def _show_snapshot(as_json: bool) -> int:
    from dlarena.environment import snapshot

    env = snapshot()
    if as_json:
        print(json.dumps(env, indent=1))
    else:
        for key, value in env.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
            print(f"{key:<16} {value}")
    return 0


# Where `dlarena report` writes a page or the charts' files when --output is not given (Markdown goes
# to standard output): beside the default database, where `make demo` leaves its report.
DEFAULT_HTML_REPORT = Path("results") / "report.html"
DEFAULT_CHARTS_FOLDER = Path("results") / "charts"
DEFAULT_HTML_COMPARISON = Path("results") / "comparison.html"
REPORT_FORMATS = ("markdown", "html", "svg", "png")


def cmd_report(args: argparse.Namespace) -> int:
    from dlarena import api

    if args.format == "markdown":
        _print(api.report(db=args.db, run_id=args.run), args.output)
    elif args.format == "html":
        _print(api.report_page(db=args.db, run_id=args.run), args.output or DEFAULT_HTML_REPORT)
    else:
        folder = args.output or DEFAULT_CHARTS_FOLDER
        files = api.report_images(db=args.db, run_id=args.run, fmt=args.format)
        _write_files(folder, files)
        print(f"wrote {counted(len(files), f'{args.format.upper()} chart')} into {folder}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from dlarena import api

    if args.format == "html":
        _print(api.compare_page(args.run_a, args.run_b, frameworks=args.frameworks, db=args.db,
                                baseline=args.baseline, nodes=args.nodes), args.output or DEFAULT_HTML_COMPARISON)
    else:
        _print(api.compare(args.run_a, args.run_b, frameworks=args.frameworks, db=args.db, baseline=args.baseline,
                           nodes=args.nodes), args.output)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dlarena import api

    _print(api.export_rows(db=args.db, run_id=args.run, fmt=args.format), args.output)
    return 0


def _size(count: int) -> str:
    size, units = float(count), ("B", "KiB", "MiB", "GiB")
    for unit in units[:-1]:
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} {units[-1]}"


def cmd_data(args: argparse.Namespace) -> int:
    from dlarena import data

    if args.action == "list":
        statuses = data.dataset_status()
        if args.json:
            print(json.dumps({"cache_folder": str(data.data_home()), "data_sets": [
                {"name": s.name, "title": s.title, "present": s.present, "where": str(s.where) if s.where else None,
                 "size_bytes": s.size, "source": s.source, "downloadable": s.downloadable,
                 "files_present": s.files_present, "files_total": s.files_total}
                for s in statuses]}, indent=1))
            return 0
        rows = [["name", "title", "present", "where", "size", "source"]]
        for status in statuses:
            files = f"{status.files_present} of {counted(status.files_total, 'file')}"
            present = "yes" if status.present else (f"no ({files})" if status.files_present else "no")
            rows.append([status.name, status.title, present, str(status.where or ""),
                         _size(status.size) if status.size else "", status.source])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
                 for row in rows]
        lines.insert(1, "| " + " | ".join("-" * width for width in widths) + " |")
        # On standard output after the table, on a line of its own: on standard error it could land
        # glued to the table's last row wherever the two streams are shown together.
        print("\n".join(lines))
        print(f"\ncache folder: {data.data_home()} (set $DLARENA_DATA to move it)")
    elif args.action == "import":
        folder = data.import_dataset(args.name, args.path)
        print(f"imported {args.name} into {folder}")
    else:
        folder = data.download_dataset(args.name, mirror=args.mirror,
                                       report=lambda message: print(message, file=sys.stderr))
        print(f"downloaded {args.name} into {folder}; every file holds the published data (checksums verified)")
    return 0


# What a fixed set of choices is called in "unknown X" (argparse names it by its destination).
_CHOICE_KINDS = {"what": "list", "action": "data command", "env_action": "env command",
                 "compile_cache": "compile cache", "denormals": "subnormal mode"}


class _Parser(argparse.ArgumentParser):
    """argparse, with every mistake on one line like the rest of dlarena's: no usage block, exit 2.

    The usage block argparse prints first pushed the one useful sentence ten lines down; the hint
    names the help of the command that was mistyped (`dlarena run --help`). Subparsers are built
    with the same class (argparse's default for ``add_subparsers``).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"dlarena: error: {message}; see `{self.prog} --help`\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's own "invalid choice" suggests nothing (Python 3.14's suggest_on_error would);
        # this is its only hook for a choice, and the same sentence as every other unknown name.
        if action.choices is not None and value not in action.choices:
            kind = _CHOICE_KINDS.get(action.dest, action.dest.replace("_", " "))
            raise argparse.ArgumentError(action, unknown(kind, str(value), [str(item) for item in action.choices]))

    def parse_known_args(  # type: ignore[override]  # one signature for typeshed's three overloads
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        # A mistyped option (`--precisions`) is refused by the command it was given to, which knows
        # its own options; argparse would leave it to the top parser's "unrecognized arguments".
        options = [extra.split("=", 1)[0] for extra in extras if extra.startswith("--")]
        if options:
            self.error(unknown("option", options[0], [o for o in self._option_string_actions if o.startswith("--")]))
        return parsed, extras


def _add_lock_holder_options(parser: argparse.ArgumentParser) -> None:
    """The options of a command that runs framework workers outside a run (verify, capabilities): which
    frameworks, where their answers go, and what to do while a run holds the machine."""
    parser.add_argument("--frameworks", type=_names,
                        help="comma-separated frameworks (default: those installed in dlarena's own environment)")
    parser.add_argument("--db", type=Path, help=DB_HELP)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--no-wait", action="store_true",
                        help="fail at once if a run is measuring on this machine (by default it waits for the run)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dlarena",
        description="Compare deep learning frameworks on the same networks, each measurement in its own process.",
    )
    parser.add_argument("--version", action="version", version=f"dlarena {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a suite of cells and store every result")
    run.add_argument("--suite", help="built-in suite name or suite TOML file (default: quick)")
    run.add_argument("--frameworks", type=_names,
                     help="comma-separated frameworks (default: the suite's, or those of dlarena's own environment)")
    run.add_argument("--workloads", type=_names, help="comma-separated workloads (default: the suite's)")
    run.add_argument("--scenarios", type=_names,
                     help="comma-separated scenarios: train, infer, accuracy, train-dp (data-parallel training)")
    run.add_argument("--devices", type=_names, help="comma-separated devices: cpu, cuda")
    run.add_argument("--precision", type=_names,
                     help="comma-separated precisions (default: float32; float16 and mixed-fp16 on a GPU only); "
                          "what each framework runs: " + precision_support())
    run.add_argument("--threads", type=_threads,
                     help="comma-separated thread counts, 'all' (powers of two) or 'max' (every core)")
    run.add_argument("--batch-sizes", type=_positive_ints("batch sizes"), help="comma-separated batch sizes")
    run.add_argument("--replicas", type=_positive_ints("replica counts"),
                     help="train-dp cells: comma-separated replica counts, each replica a process with --threads"
                          " cores of its own, the batch size being the global batch (default: the suite's, else 1)")
    run.add_argument("--repetitions", type=_positive_int("repetitions"),
                     help="worker processes per cell: a timing cell's pilot, an accuracy cell's seeds (default: the"
                          " suite's, else 3)")
    run.add_argument("--target-ci", type=_share("--target-ci"), metavar="SHARE",
                     help="timing cells: add processes until the 95%% interval of the median is within this share"
                          " of it, e.g. 0.03 for 3%%; 0 runs the pilot only (default: the suite's, else 0.03)")
    run.add_argument("--max-processes", type=_positive_int("max processes"),
                     help="timing cells: the most processes, the pilot's included (default: the suite's, else 6)")
    run.add_argument("--time-budget", type=float, metavar="SECONDS",
                     help="start no process beyond a cell's pilot that would end past this many seconds of the run"
                          " (default: the suite's, else none)")
    run.add_argument("--epochs", type=_positive_int("epochs"),
                     help="accuracy cells: the most epochs (default: the workload's training recipe)")
    run.add_argument("--target-accuracy", type=_fraction, metavar="FRACTION",
                     help="accuracy cells: stop at this test accuracy (default: the workload's training recipe)")
    run.add_argument("--memory-limit", type=float, metavar="GIB",
                     help="GiB a cell may use before it is killed as oom (default: the suite's, else 80%% of memory)")
    run.add_argument("--compile-cache", choices=COMPILE_CACHES,
                     help="cold: every process compiles from an empty cache; shared: the framework's own"
                          " persistent cache as this machine has it (default: the suite's, else cold)")
    run.add_argument("--denormals", choices=DENORMAL_MODES,
                     help="default: each framework treats subnormal numbers as it does by itself (TensorFlow and"
                          " JAX flush them to zero, PyTorch and ONNX Runtime keep them); flush: flush them where"
                          " the framework can, unsupported where not (default: the suite's, else default)")
    run.add_argument("--timeout", type=float, help="seconds before a cell's process is killed (default: the "
                     "suite's for its own cells, else 600 for timing and one derived from the recipe for accuracy)")
    run.add_argument("--db", type=Path, help=DB_HELP)
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--resume", nargs="?", const="latest", metavar="RUN_ID",
                     help="run only the processes RUN_ID (default: the latest run) still lacks")
    run.add_argument("--allow-changes", action="store_true",
                     help="with --resume: resume although dlarena or a framework changed (recorded in the run)")
    run.add_argument("--no-wait", action="store_true",
                     help="refuse instead of waiting when another run is measuring on this machine")
    run.add_argument("--executor", choices=EXECUTORS, default="local",
                     help="local: each cell's processes on this machine; ray: on the nodes of a Ray cluster with a"
                          " measurement slot, one cell per node at a time (pip install 'dlarena[ray]'; default: local)")
    run.add_argument("--address", metavar="HOST:PORT",
                     help="with --executor ray: the cluster's head (default: $RAY_ADDRESS, else the cluster started on"
                          " this machine)")
    run.add_argument("--nodes", metavar="KEY=VALUE,...",
                     help="with --executor ray: only the nodes with these labels (`ray start --labels`; a node's"
                          " name is its dlarena-node label)")
    run.add_argument("--spread", action="store_true",
                     help="with --executor ray: every chosen node runs every cell (compare the machines); by default"
                          " each cell runs once, on whichever node is free")
    run.set_defaults(handler=cmd_run)

    verify = commands.add_parser(
        "verify", help="check that every framework computes the same numbers as the NumPy oracle and each other"
    )
    _add_lock_holder_options(verify)
    verify.add_argument("--workloads", type=_names,
                        help="comma-separated workloads, or 'all' (default: the quick suite's)")
    verify.add_argument("--full", action="store_true", help="the published sizes instead of the small twins")
    verify.add_argument("--precision", default="float32",
                        help="the precision checked beside float64: float32 (default), bfloat16 or mixed-bf16 "
                             "(float16 and mixed-fp16 on a GPU)")
    verify.set_defaults(handler=cmd_verify)

    capabilities = commands.add_parser(
        "capabilities", help="ask each framework what it can do (capability probes) and print the matrix")
    _add_lock_holder_options(capabilities)
    capabilities.add_argument("--probes", type=_names, help="comma-separated probes (default: every probe)")
    capabilities.add_argument("--json", action="store_true", help="every answer as JSON instead of the matrix")
    capabilities.set_defaults(handler=cmd_capabilities)

    listing = commands.add_parser("list", help="list frameworks, workloads or suites")
    listing.add_argument("what", choices=("frameworks", "workloads", "suites"))
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=cmd_list)

    env = commands.add_parser(
        "env", help="the machine snapshot stored with each run; set up, list or remove managed environments")
    env.add_argument("--json", action="store_true", help="machine-readable output")
    env_actions = env.add_subparsers(dest="env_action", required=False, metavar="ACTION")
    env_show = env_actions.add_parser("show", help="the machine and software snapshot stored with each run (default)")
    env_show.add_argument("--json", action="store_true", help="machine-readable output")
    env_list = env_actions.add_parser("list", help="the managed environments: present or not, Python, size, frameworks")
    env_list.add_argument("--json", action="store_true", help="machine-readable output")
    env_setup = env_actions.add_parser("setup", help="create managed environments under the cache folder")
    env_setup.add_argument("names", nargs="+", metavar="NAME", help="environment names (see `dlarena env list`)")
    env_remove = env_actions.add_parser("remove", help="delete managed environments (every pin version)")
    env_remove.add_argument("names", nargs="+", metavar="NAME", help="environment names")
    env.set_defaults(handler=cmd_env)

    runs = commands.add_parser("runs", help="the runs of a database: suite, start, status, cells by status")
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.add_argument("--db", type=Path, help=DB_HELP)
    runs.set_defaults(handler=cmd_runs)

    report = commands.add_parser("report", help="a run's report (the latest by default): Markdown tables, an"
                                                " interactive HTML page, or its charts as SVG or PNG files")
    report.add_argument("--run", help="run id (default: the latest)")
    report.add_argument("--format", choices=REPORT_FORMATS, default="markdown",
                        help="markdown (default: to standard output), html (one self-contained page, default"
                             f" {DEFAULT_HTML_REPORT}), svg or png (one file per chart, into a folder, default"
                             f" {DEFAULT_CHARTS_FOLDER})")
    report.add_argument("--output", type=Path,
                        help="the file to write (markdown, html) or the folder (svg, png)")
    report.add_argument("--db", type=Path, help=DB_HELP)
    report.set_defaults(handler=cmd_report)

    compare = commands.add_parser(
        "compare", help="verdicts, cell by cell: run B against run A, framework B against A, or N frameworks ranked"
    )
    compare.add_argument("run_a", metavar="RUN_A", help="run id, or 'latest'")
    compare.add_argument("run_b", metavar="RUN_B", nargs="?", help="run id, or 'latest' (omit with --frameworks)")
    compare.add_argument("--frameworks", type=_names,
                         help="A,B: framework B against A on the same cells; A,B,C,...: rank them, each cell against"
                              " its fastest (or --baseline)")
    compare.add_argument("--baseline", metavar="NAME",
                         help="with --frameworks: set every framework against NAME instead of the fastest")
    compare.add_argument("--nodes", type=_names, metavar="A,B",
                         help="cluster node B against node A on the cells RUN_A measured on both (`dlarena run"
                              " --executor ray --spread`)")
    compare.add_argument("--format", choices=("markdown", "html"), default="markdown",
                         help="markdown (default: to standard output) or html (one self-contained page with a forest"
                              f" plot of the ratios, default {DEFAULT_HTML_COMPARISON})")
    compare.add_argument("--output", type=Path, help="the file to write")
    compare.add_argument("--db", type=Path, help=DB_HELP)
    compare.set_defaults(handler=cmd_compare)

    export = commands.add_parser("export", help="one row per cell as CSV or JSON, ready for pandas")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--run", help="run id (default: the latest)")
    export.add_argument("--output", type=Path, help="write to this file instead of standard output")
    export.add_argument("--db", type=Path, help=DB_HELP)
    export.set_defaults(handler=cmd_export)

    data = commands.add_parser("data", help="list, import or download the real data sets of the accuracy scenarios")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    data_list = actions.add_parser("list", help="the known data sets: present or not, where, size, source")
    data_list.add_argument("--json", action="store_true", help="machine-readable output")
    data_import = actions.add_parser(
        "import", help="copy a data set's published files from a local file or folder into the cache, after checking"
    )
    data_import.add_argument("name", metavar="NAME", help="data set name (see `dlarena data list`)")
    data_import.add_argument("path", metavar="PATH", type=Path,
                             help="a published file, or a folder holding the published files or extracted folder")
    data_download = actions.add_parser("download", help="download a data set into the cache, verifying each SHA-256")
    data_download.add_argument("name", metavar="NAME", help="data set name (see `dlarena data list`)")
    data_download.add_argument("--mirror", metavar="URL",
                               help="base URL of a mirror holding the files under their published names")
    data.set_defaults(handler=cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "timeout", None) is not None and args.timeout <= 0:
        print("dlarena: error: --timeout must be a positive number of seconds", file=sys.stderr)
        return 2
    if getattr(args, "memory_limit", None) is not None and args.memory_limit <= 0:
        print("dlarena: error: --memory-limit must be a positive number of GiB", file=sys.stderr)
        return 2
    try:
        code: int = args.handler(args)
    except DlarenaError as error:
        print(f"dlarena: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("dlarena: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dlarena export | head`
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
