"""The `scalereg` command.

Commands that run work (convert, warp, run, demo) run the Prefect flows in flows/; they are
imported only when used, so the core stays free of Prefect.  A user error prints
one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

from scalereg.errors import BAD_INPUT_STATE, InputError, input_error_from_os
from scalereg.processes import die_with_parent
from scalereg.redact import mask_secrets, refuse_url_credentials

EXIT_USER_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (0, 1 for a failure that is not the
    user's, 2 for a user error, 130 for an interrupt)."""
    from scalereg.logs import install_masking, log_to_file, new_log_file

    called_as_command = argv is None and os.environ.get(SUPERVISED_VARIABLE) != "1"
    argv = list(sys.argv[1:] if argv is None else argv)
    install_masking()
    try:
        for argument in argv:  # before argparse, which echoes what it refuses
            refuse_url_credentials(argument)
        args = _parser().parse_args(argv)
    except InputError as error:
        return _user_error(error)
    except _UsageError as error:
        print(f"scalereg: error: {mask_secrets(str(error))}", file=sys.stderr)
        return EXIT_USER_ERROR
    if not getattr(args, "command", None):
        _parser().print_help()
        return EXIT_USER_ERROR
    if called_as_command and _supervised_command(args):
        return _supervise(argv)
    global _LOG_FILE
    _LOG_FILE = new_log_file(args.command)
    _CLEANUPS.append(log_to_file(_LOG_FILE))
    try:
        if getattr(args, "runs_flows", False) and not getattr(args, "dry_run", False):
            _launch_temporary_server_early()
        return int(args.run(args) or 0)
    except InputError as error:
        return _user_error(error)
    except KeyboardInterrupt:
        print("scalereg: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a bug: one line, the traceback in the log
        user = input_error_from_os(error)  # a full disk, a read-only filesystem, no permission
        if user is not None:
            return _user_error(user)
        logging.getLogger("scalereg.cli").error("internal error", exc_info=True)
        return _internal_error(f"{type(error).__name__}: {error}")
    finally:
        if "flows.cluster" in sys.modules:  # a cluster started ahead that no flow took over
            sys.modules["flows.cluster"].close_prestarted()
        _stop_unused_early_server()
        while _CLEANUPS:
            _CLEANUPS.pop()()
        _LOG_FILE = None


SUPERVISED_VARIABLE = "SCALEREG_SUPERVISED"
# seconds a command gets to stop in order after an interrupt, before its processes are killed
STOP_GRACE_SECONDS = 8.0


def _supervised_command(args: argparse.Namespace) -> bool:
    """Whether ``args`` starts work that outlives a plain Ctrl-C: a Dask cluster, Prefect's
    server, or ANTs (a C++ call Python cannot interrupt)."""
    return args.command in ("convert", "warp", "run", "demo", "register") and not getattr(args, "dry_run", False)


def _supervise(argv: list[str]) -> int:
    """Run the command in a child process in a session of its own, and stop it in order
    when interrupted.

    Ctrl-C at a terminal signals every process of the terminal's process group: here
    the command's Dask workers and Prefect's server too, which then die under the run
    (a worker mid-task, a server the run still reports to) while the command waits on
    them.  In a session of its own, the command and everything it starts get no signal
    from the terminal; this process forwards an interrupt (SIGINT, SIGTERM, SIGHUP) to
    the command alone, which stops its flow, closes its cluster and its server and
    exits, leaving its outputs incomplete and resumable.  A command that has not
    stopped ``STOP_GRACE_SECONDS`` later (or at a second Ctrl-C) is killed with every
    process of its session; so is one whose supervisor is killed (SIGKILL cannot be
    forwarded: the kernel kills the command, `die_with_parent`, and its workers and
    server end with it).  Returns its exit code (130 when interrupted)."""
    import signal
    import subprocess
    import time

    child = subprocess.Popen(
        [sys.executable, "-m", "scalereg.cli", *argv], env={**os.environ, SUPERVISED_VARIABLE: "1"}, stdin=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=die_with_parent(signal.SIGKILL),  # this process is one thread still: safe
    )  # fmt: skip
    interrupts: list[float] = []

    def forward(signum: int, frame: Any) -> None:
        interrupts.append(time.monotonic())
        if len(interrupts) == 1 and child.poll() is None:
            child.send_signal(signal.SIGINT)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {number: signal.getsignal(number) for number in handled}
    for number in handled:
        if previous[number] != signal.SIG_IGN:  # an ignored signal (nohup) stays ignored
            signal.signal(number, forward)
    try:
        while True:
            try:
                code = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if interrupts and (len(interrupts) > 1 or time.monotonic() - interrupts[0] > STOP_GRACE_SECONDS):
                _kill_session(child.pid, signal.SIGKILL)
                child.wait()
                print("scalereg: interrupted; the run did not stop in time and was killed; re-run the same command to resume", file=sys.stderr)
                return 130
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    _kill_session(child.pid, signal.SIGTERM)  # anything of the run still there (there should be nothing)
    return 130 if interrupts and code in (130, -signal.SIGINT) else code


def _kill_session(session: int, signum: int) -> None:
    """Signal every process whose session is ``session`` (the command's; none of ours)."""
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session:
                    os.kill(int(entry), signum)
            except (ProcessLookupError, PermissionError):
                continue


# The log file of the command running now (see scalereg.logs), and what undoes, when
# it ends, what it changed in this process (main may be called again, from Python).
_LOG_FILE: Path | None = None
_CLEANUPS: list[Callable[[], None]] = []


def _user_error(error: InputError) -> int:
    print(f"scalereg: error: {_one_line(str(error))}", file=sys.stderr)
    return EXIT_USER_ERROR


def _internal_error(message: str) -> int:
    """Report a failure that is not the user's: one line, saying so and where the log is."""
    where = f"; the log is {_LOG_FILE}" if _LOG_FILE is not None and _LOG_FILE.exists() else ""
    print(f"scalereg: internal error (a bug in scalereg, please report it): {_one_line(message)}{where}", file=sys.stderr)
    return 1


def _failed_run(state: Any) -> int:
    """The exit code of a flow run that failed, after printing its one line: 2 for bad
    input (and parameters its models refused), 1 for anything else."""
    message = state.message or state.name
    if state.name == BAD_INPUT_STATE:
        print(f"scalereg: error: {_one_line(message)}", file=sys.stderr)
        return EXIT_USER_ERROR
    if "invalid parameters" in message:  # Prefect's parameter validation: the models refused a value
        print(f"scalereg: error: {_one_line(message.split('invalid parameters:', 1)[-1])}", file=sys.stderr)
        return EXIT_USER_ERROR
    logging.getLogger("scalereg.cli").error("flow run failed: %s", message)
    return _internal_error(message)


def _one_line(text: str) -> str:
    """``text`` masked and on one line (a multi-line message's lines joined with '; ')."""
    lines = [line.strip().removeprefix("- ") for line in mask_secrets(text).splitlines() if line.strip()]
    return "; ".join(lines)


class _UsageError(Exception):
    """What argparse refuses (an unknown option, a value of the wrong type)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a refusal as one line (usage is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see: {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scalereg", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    convert = commands.add_parser("convert", help="convert a volume to an OME-Zarr pyramid (runs the convert-volume flow)")
    convert.add_argument("input", help="NIfTI, TIFF file/directory/glob, NRRD/MHA, Zarr array, OME-Zarr (local or s3://)")
    convert.add_argument("output", help="output OME-Zarr path (e.g. brain.ome.zarr)")
    _add_conversion_options(convert)
    convert.add_argument("--dry-run", action="store_true", help="print the plan (levels, tasks, memory per task) and stop")
    convert.set_defaults(run=_convert, runs_flows=True)

    register = commands.add_parser("register", help="register a moving OME-Zarr pyramid to a fixed one, coarse to fine")
    register.add_argument("--fixed", required=True, help="fixed (reference) OME-Zarr pyramid")
    register.add_argument("--moving", required=True, help="moving OME-Zarr pyramid")
    register.add_argument("--out", required=True, help="transform directory to write")
    register.add_argument("--schedule", default="mouse", help="mouse (default), human, or a YAML/JSON schedule file")
    register.add_argument("--memory-budget", default="8GiB", help="memory for one registration step (default 8GiB)")
    register.add_argument("--fixed-mask", default=None, help="OME-Zarr mask pyramid on the fixed image's grid")
    register.add_argument("--moving-mask", default=None, help="OME-Zarr mask pyramid on the moving image's grid")
    register.add_argument("--normalize", action="store_true", help="clip intensities to the 0.5-99.5 percentiles, scale to [0, 1]")
    register.add_argument("--overwrite", action="store_true", help="replace a transform directory written for other inputs")
    register.add_argument("--dry-run", action="store_true", help="print the plan (levels, memory, where it stops) and stop")
    register.set_defaults(run=_register)

    warp = commands.add_parser("warp", help="warp a full-resolution OME-Zarr volume onto a reference grid, tile by tile")
    warp.add_argument("--transform", action="append", required=True, metavar="T",
                      help="a scalereg transform directory, or ANTs transform files (repeat; .mat, [file.mat,1] to invert, "
                           ".nii.gz fields) in ants.apply_transforms order")
    warp.add_argument("--moving", required=True, help="OME-Zarr pyramid to warp")
    warp.add_argument("--reference", required=True, help="OME-Zarr pyramid whose grid the output takes")
    warp.add_argument("--out", required=True, help="output OME-Zarr pyramid")
    warp.add_argument("--level", type=int, default=0, help="reference level that sets the output grid (default 0)")
    warp.add_argument("--moving-level", type=int, default=None, help="moving level to read (default: the one matching the output's spacing)")
    warp.add_argument("--interpolation", choices=["linear", "bspline", "nearest", "label"], default="linear",
                      help="linear (default), bspline, nearest, or label (ANTs' genericLabel: label values preserved)")
    warp.add_argument("--inverse", action="store_true", help="use the transform directory's inverse: fixed-space images onto the moving grid")
    warp.add_argument("--output-dtype", default=None, help="output type (default: the moving image's); values are rounded and clipped")
    warp.add_argument("--memory-budget", default=None, help="memory per task (sets the tile size; default: from the workers' memory, at most 768MiB)")
    warp.add_argument("--overwrite", action="store_true", help="replace an existing output")
    warp.add_argument("--cluster", default="local", help="local, a profile in infra/clusters, a YAML file or tcp://host:port")
    warp.add_argument("--dry-run", action="store_true", help="print the plan (tiles, memory per task) and stop")
    warp.set_defaults(run=_warp, runs_flows=True)

    points = commands.add_parser("transform-points", help="map a CSV of point coordinates (e.g. cells) between moving and fixed space")
    points.add_argument("--transform", action="append", required=True, metavar="T",
                        help="a scalereg transform directory, or ANTs files in ants.apply_transforms_to_points order")
    points.add_argument("--points", required=True, help="CSV with columns z,y,x (voxel, physical) or x,y,z (lps); other columns are kept")
    points.add_argument("--out", required=True, help="CSV to write: the mapped coordinates plus outside_field and outside_image flags")
    points.add_argument("--from", dest="source_space", choices=["moving", "fixed"], default="moving",
                        help="space the points are in (default moving: sample -> atlas); with a transform directory")
    points.add_argument("--coordinates", choices=["voxel", "physical", "lps"], default="voxel",
                        help="voxel (level-0 indices, default), physical (the OME-Zarr's frame and unit) or lps (micrometers)")
    points.add_argument("--source-image", default=None, help="OME-Zarr the points refer to (default: from the transform directory)")
    points.add_argument("--target-image", default=None, help="OME-Zarr of the target space (default: from the transform directory)")
    points.add_argument("--drop-outside", action="store_true", help="leave out points that land outside the target image")
    points.add_argument("--overwrite", action="store_true", help="replace an --out that an earlier transform-points wrote")
    points.set_defaults(run=_transform_points)

    run = commands.add_parser("run", help="the whole pipeline for one brain: convert, register coarse to fine, warp (register-brain flow)")
    run.add_argument("--fixed", required=True, help="fixed (reference) volume: NIfTI, TIFF, NRRD/MHA, Zarr or OME-Zarr")
    run.add_argument("--moving", required=True, help="moving volume (the sample), any readable format")
    run.add_argument("--out", required=True, help="output directory (pyramids, transform/, warped.ome.zarr, report.md)")
    for role in ("fixed", "moving"):
        run.add_argument(f"--{role}-spacing", nargs=3, type=float, metavar=("Z", "Y", "X"), help=f"voxel spacing of the {role} volume (overrides the file's)")
        run.add_argument(f"--{role}-unit", default=None, help=f"space unit of --{role}-spacing")
        run.add_argument(f"--{role}-orientation", default=None, help=f"3-letter orientation code of the {role} volume (e.g. asr)")
    run.add_argument("--schedule", default="mouse", help="mouse (default), human, or a YAML/JSON schedule file")
    run.add_argument("--memory-budget", default="auto", help="memory for one registration step (default auto: 3/4 of a worker's memory per thread)")
    run.add_argument("--warp-memory-budget", default="auto", help="memory per warp task (default auto: half a worker's memory per thread, at most 768MiB)")
    run.add_argument("--interpolation", choices=["linear", "bspline", "nearest", "label"], default="linear")
    run.add_argument("--chunks", type=int, default=128, help="chunk edge of the pyramids written (default 128)")
    run.add_argument("--overwrite", action="store_true", help="replace outputs written for other inputs")
    run.add_argument("--cluster", default="local", help="local, slurm (a profile in infra/clusters), a YAML file or tcp://host:port")
    run.set_defaults(run=_run, runs_flows=True)

    info = commands.add_parser("info", help="print an OME-Zarr image's levels, shapes, spacing, orientation")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_info)

    validate = commands.add_parser(
        "validate", help="validate an OME-Zarr image (NGFF spec, level consistency, checksums) or a transform directory (checksums)"
    )
    validate.add_argument("path")
    validate.set_defaults(run=_validate)

    sample = commands.add_parser("sample-data", help="fetch real brain volumes from registry packages into the cache")
    sample.add_argument("names", nargs="*", help="datasets (default: all)")
    sample.add_argument("--cache-dir", default=None, help="cache directory (default: $SCALEREG_DATA or ~/.cache/scalereg)")
    sample.set_defaults(run=_sample_data)

    demo = commands.add_parser("demo", help="fetch the sample mouse brain and run the pipeline on it (LocalCluster)")
    demo.add_argument("--out", default="scalereg-demo", help="directory for the demo's inputs/ and outputs/ (default: ./scalereg-demo)")
    demo.add_argument("--cluster", default="local", help="cluster profile, YAML file or tcp:// address")
    demo.set_defaults(run=_demo, runs_flows=True)
    return parser


def _add_conversion_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"), help="voxel spacing (overrides the file's)")
    parser.add_argument("--unit", default=None, help="space unit of --spacing (default: the file's, else micrometer)")
    parser.add_argument("--orientation", default=None, help="3-letter origin code per array axis, e.g. asr (see README)")
    parser.add_argument("--ngff-version", choices=["0.4", "0.5"], default="0.5", help="0.4 (zarr v2) or 0.5 (zarr v3)")
    parser.add_argument("--chunks", type=int, default=128, help="chunk edge length in voxels (default 128)")
    parser.add_argument("--shards", type=int, default=None, help="shard edge length (NGFF 0.5 only; multiple of --chunks)")
    parser.add_argument("--labels", action="store_true", help="label image: mode downsampling, labels preserved")
    parser.add_argument("--memory-budget", default=None, help="memory per task, e.g. 512MiB (sets the block size; default: from the workers' memory, at most 512MiB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--cluster", default="local", help="local, a profile in infra/clusters, a YAML file or tcp://host:port")


def _conversion_options(args: argparse.Namespace) -> dict[str, Any]:
    from scalereg.convert.plan_conversion import DEFAULT_MEMORY_BUDGET

    return {
        "spacing": list(args.spacing) if args.spacing else None,
        "unit": args.unit,
        "orientation": args.orientation,
        "ngff_version": args.ngff_version,
        "chunks": args.chunks,
        "shards": args.shards,
        "labels": args.labels,
        "memory_budget": args.memory_budget or DEFAULT_MEMORY_BUDGET,
    }


def _convert(args: argparse.Namespace) -> int:
    from scalereg.convert import output_state, plan_conversion

    options = _conversion_options(args)
    # Plan here first: bad input fails in a second, before any cluster starts.
    plan = plan_conversion(args.input, args.output, **options)
    state = output_state(plan, overwrite=args.overwrite)
    _print_plan(plan)
    if state != "new":
        print(f"{plan.output}: an earlier run of this conversion exists ({state}); it will be {'left as is' if state == 'complete' else 'resumed'}")
    if args.dry_run:
        return 0
    # The flow sizes tasks from its workers' memory unless a budget was given.
    options["memory_budget"] = args.memory_budget or "auto"
    return _run_convert_flow(args.input, args.output, options, overwrite=args.overwrite, cluster=args.cluster)


def _run_convert_flow(source: str, output: str, options: dict[str, Any], overwrite: bool, cluster: str) -> int:
    prefect_ready = _start_prefect(cluster)
    from flows.convert_volume import convert_volume

    with prefect_ready():
        state = convert_volume(source=source, output=output, overwrite=overwrite, cluster=cluster, return_state=True, **options)
    if state.is_failed():
        return _failed_run(state)
    result = state.result()
    print(f"wrote {result['output']} ({result['state']})")
    return 0


def _print_plan(plan: Any) -> None:
    geometry = plan.layout.geometry
    print(
        f"{plan.source.uri}: {' x '.join(map(str, plan.layout.shape))} {plan.layout.dtype}, spacing "
        f"{' x '.join(f'{s:g}' for s in geometry.spacing)} {geometry.unit}, orientation {geometry.orientation or 'unknown'}"
    )
    for note in plan.notes:
        print(f"note: {note}")
    print(f"{'level':>5} {'shape':>18} {'spacing':>22} {'chunks':>12} {'tasks':>6} {'memory/task':>12}")
    for row in plan.summary():
        print(f"{row['level']:>5} {row['shape']:>18} {row['spacing']:>22} {row['chunks']:>12} {row['tasks']:>6} {row['memory_per_task']:>12}")


def _register(args: argparse.Namespace) -> int:
    from scalereg.omezarr import read_pyramid
    from scalereg.output_roots import confine_output
    from scalereg.register import load_schedule, plan_registration, register_pyramids
    from scalereg.units import parse_bytes

    fixed, moving = _path_or_uri(args.fixed), _path_or_uri(args.moving)
    # this command writes without a flow: confine its output here (when roots are set)
    confine_output(_path_or_uri(args.out), subject="--out")
    plan = plan_registration(read_pyramid(fixed), read_pyramid(moving), load_schedule(args.schedule), parse_bytes(args.memory_budget), fixed, moving)
    print(f"schedule {plan.schedule.name}: {len(plan.steps)} steps, memory budget {args.memory_budget}")
    for row in plan.summary():
        print("  " + "  ".join(f"{value}" for value in row.values()))
    for note in plan.notes:
        print(f"note: {note}")
    if args.dry_run:
        return 0

    manifest = register_pyramids(  # it holds the directory's lock while it writes
        fixed,
        moving,
        args.out,
        schedule=args.schedule,
        memory_budget=args.memory_budget,
        fixed_mask=args.fixed_mask,
        moving_mask=args.moving_mask,
        normalize=args.normalize,
        overwrite=args.overwrite,
        on_step=_print_step,
    )
    print(f"wrote {os.path.abspath(args.out)}: forward {manifest['outputs']['forward']}")
    return 0


def _warp(args: argparse.Namespace) -> int:
    from scalereg.convert import output_state
    from scalereg.warp import DEFAULT_WARP_BUDGET, plan_warp

    options = {
        "transform": [_path_or_uri(t) if not t.startswith(("[", "!")) else t for t in args.transform],
        "moving": _path_or_uri(args.moving),
        "reference": _path_or_uri(args.reference),
        "output": _path_or_uri(args.out),
        "level": args.level,
        "moving_level": args.moving_level,
        "interpolation": args.interpolation,
        "inverse": args.inverse,
        "output_dtype": args.output_dtype,
        "memory_budget": args.memory_budget or DEFAULT_WARP_BUDGET,
    }
    # Plan here first: bad input fails in a second, before any cluster starts.
    plan = plan_warp(**options)
    state = output_state(plan, overwrite=args.overwrite)
    _print_plan(plan)
    if state != "new":
        print(f"{plan.output}: an earlier run of this warp exists ({state}); it will be {'left as is' if state == 'complete' else 'resumed'}")
    if args.dry_run:
        return 0
    prefect_ready = _start_prefect(args.cluster)
    from flows.warp_volume import warp_volume

    options["memory_budget"] = args.memory_budget or "auto"  # the flow sizes tiles from its workers' memory
    with prefect_ready():
        flow_state = warp_volume(**options, overwrite=args.overwrite, cluster=args.cluster, return_state=True)
    if flow_state.is_failed():
        return _failed_run(flow_state)
    result = flow_state.result()
    outside = result["levels"][0].get("tiles_outside", 0) if result["levels"] else 0
    print(f"wrote {result['output']} ({result['state']})" + (f"; {outside} tiles mapped entirely outside the moving image" if outside else ""))
    return 0


def _transform_points(args: argparse.Namespace) -> int:
    import pandas as pd

    from scalereg.output_roots import confine_output
    from scalereg.output_rules import check_apart, existing_output
    from scalereg.storage import check_writable
    from scalereg.transforms.transform_points import transform_points

    # this command writes without a flow: confine its output here (when roots are set), before any work
    target = confine_output(_path_or_uri(args.out), subject="--out")
    if "://" not in target:
        check_writable(target, subject="--out")
    inputs = [("points file", _path_or_uri(args.points)), ("source image", args.source_image), ("target image", args.target_image)]
    check_apart(target, inputs + [("transform input", t) for t in args.transform], subject="--out")
    if existing_output(target, "points", subject="--out") != "nothing" and not args.overwrite:
        raise InputError("--out", f"{target}: already exists (written by transform-points); pass --overwrite to replace it")
    if os.path.isdir(args.points):
        raise InputError(args.points, "is a directory, not a CSV file of points")
    try:
        table = pd.read_csv(args.points)
    except (FileNotFoundError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(args.points, f"cannot read the CSV ({type(error).__name__}: {error})") from None
    names = ["x", "y", "z"] if args.coordinates == "lps" else ["z", "y", "x"]
    columns = {c.strip().lower(): c for c in table.columns}
    missing = [n for n in names if n not in columns]
    if missing:
        raise InputError(args.points, f"needs columns {','.join(names)} for {args.coordinates} coordinates; found {', '.join(map(str, table.columns))}")
    try:
        values = table[[columns[n] for n in names]].apply(pd.to_numeric, errors="raise").to_numpy(dtype=float)
    except ValueError as error:
        raise InputError(args.points, f"coordinates must be numbers ({error})") from None
    transform = args.transform[0] if len(args.transform) == 1 else args.transform
    result = transform_points(
        values,
        transform,
        source_space=args.source_space,
        coordinates=args.coordinates,
        source_image=args.source_image,
        target_image=args.target_image,
    )
    out = table.copy()
    for position, name in enumerate(names):
        out[columns[name]] = result.points[:, position]
    out["outside_field"] = result.outside_field
    if result.outside_image is not None:
        out["outside_image"] = result.outside_image
        if args.drop_outside:
            out = out[~result.outside_image]
    _write_csv_whole(out, target)
    outside = int(result.outside_image.sum()) if result.outside_image is not None else 0
    print(
        f"wrote {args.out}: {len(table)} points, {int(result.outside_field.sum())} outside the displacement field "
        f"(moved by the affine only), {outside} outside the target image" + (" (dropped)" if args.drop_outside and outside else "")
    )
    return 0


def _write_csv_whole(table: Any, target: str) -> None:
    """Write ``table`` to ``target`` whole or not at all: locally through a temporary file
    beside it, renamed into place (an object store's PUT is whole by itself).  A place
    that cannot be written is the user's error, naming --out."""
    if "://" in target:
        from scalereg.storage import write_bytes
        from scalereg.storage_errors import storage_errors

        with storage_errors(target):  # with the store's settings, as every other output
            write_bytes(target, table.to_csv(index=False).encode())
        return
    import uuid

    # a name of its own, created as any file is (the umask's permissions, unlike mkstemp's 0600)
    temporary = os.path.join(os.path.dirname(target), f".scalereg-{uuid.uuid4().hex}.csv.partial")
    try:
        with open(temporary, "x", newline="") as stream:
            table.to_csv(stream, index=False)
        os.replace(temporary, target)
    except OSError as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise InputError("--out", f"{target}: cannot write the CSV there ({error.strerror or error})") from None


def _run(args: argparse.Namespace) -> int:
    prefect_ready = _start_prefect(args.cluster)
    from flows.parameters import ImageSource, RegistrationOptions, WarpOptions, parameters
    from flows.register_brain import register_brain

    images = {
        role: parameters(
            ImageSource, f"--{role}", uri=_path_or_uri(getattr(args, role)), spacing=getattr(args, f"{role}_spacing"),
            unit=getattr(args, f"{role}_unit"), orientation=getattr(args, f"{role}_orientation"),
        )
        for role in ("fixed", "moving")
    }  # fmt: skip
    with prefect_ready():
        state = register_brain(
            **images, out=_path_or_uri(args.out),
            registration=parameters(RegistrationOptions, "--schedule/--memory-budget", schedule=args.schedule, memory_budget=args.memory_budget),
            warp=parameters(WarpOptions, "--warp-memory-budget", interpolation=args.interpolation, memory_budget=args.warp_memory_budget),
            chunks=args.chunks, overwrite=args.overwrite, cluster=args.cluster, return_state=True,
        )  # fmt: skip
    code = _print_stages(state)
    if code == 0:
        print(f"report: {state.result()['report']}")
    return code


def _print_stages(state: Any) -> int:
    """Exit code of a register-brain run, after printing its stages (or its error)."""
    if state.is_failed():
        return _failed_run(state)
    for stage in state.result()["stages"]:
        print(f"{stage['stage']}: {stage['state']} -> {stage['output']}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from scalereg.omezarr import read_pyramid

    layout = read_pyramid(_path_or_uri(args.path))
    status = layout.attributes.get("status") or {}
    geometry = layout.geometry
    if args.json:
        print(
            json.dumps(
                {
                    "path": args.path,
                    "ngff_version": layout.ngff_version,
                    "dtype": layout.dtype,
                    "unit": geometry.unit,
                    "orientation": geometry.orientation,
                    "status": status.get("status"),
                    "levels": [
                        {"path": l.path, "shape": l.shape, "scale": l.scale, "translation": l.translation, "chunks": l.chunks, "shards": l.shards}
                        for l in layout.levels
                    ],
                },
                indent=2,
            )
        )
        return 0
    print(f"{args.path}: OME-Zarr {layout.ngff_version}, {layout.dtype}, {layout.name}")
    print(f"orientation: {geometry.orientation or 'unknown'}   unit: {geometry.unit}   status: {status.get('status', 'n/a')}")
    print(f"{'level':>5} {'shape':>18} {'spacing':>24} {'translation':>30} {'chunks':>14}")
    for level in layout.levels:
        print(
            f"{level.path:>5} {' x '.join(map(str, level.shape)):>18} {' x '.join(f'{s:g}' for s in level.scale):>24} "
            f"{', '.join(f'{t:g}' for t in level.translation):>30} {' x '.join(map(str, level.chunks)):>14}"
        )
    return 0


def _validate(args: argparse.Namespace) -> int:
    from scalereg.omezarr import validate_pyramid
    from scalereg.transforms.transform_checksums import has_transform_manifest, validate_transform_directory

    path = _path_or_uri(args.path)
    if "://" not in path and not os.path.exists(path):
        raise InputError(path, "no such file or directory")
    # a transform directory (its manifest.json) or an OME-Zarr image
    problems = validate_transform_directory(path) if has_transform_manifest(path) else validate_pyramid(path)
    if problems:
        for problem in problems:
            print(f"{args.path}: {problem}")
        return 1
    print(f"{args.path}: valid")
    return 0


def _sample_data(args: argparse.Namespace) -> int:
    from scalereg.sample_data import fetch_sample_data

    volumes = fetch_sample_data(args.names or None, cache_dir=args.cache_dir)
    for name, volume in volumes.items():
        extra = "".join(f"\n    {key}: {path}" for key, path in volume.extra.items())
        print(f"{name}: {volume.path}{extra}")
    return 0


DEMO_SCHEDULE = {
    "name": "demo-mouse",
    "steps": [
        {"spacing": 200, "transform": "rigid", "iterations": [500, 250], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
        {"spacing": 100, "transform": "affine", "iterations": [500, 250], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
        {"spacing": 100, "transform": "syn", "metric": "mattes", "iterations": [40, 20], "shrink_factors": [2, 1],
         "smoothing_sigmas": [1, 0], "gradient_step": 0.25},
    ],
}  # fmt: skip


def _demo(args: argparse.Namespace) -> int:
    """The whole pipeline on the sample mouse brain: a copy of it moved by a known affine
    and smooth warp is registered back to it by the register-brain flow (convert both,
    register coarse to fine, warp at full resolution), and the result is scored
    against the known truth."""
    import numpy as np
    import tifffile
    import zarr

    from scalereg.geometry import Geometry
    from scalereg.register.ants_image import to_ants_image
    from scalereg.sample_data import fetch_sample_data
    from scalereg.synthetic import deform, make_deformation, residual_um

    mouse = fetch_sample_data(["mouse"])["mouse"]
    # the made-up inputs and the run's outputs side by side: an output never holds an input
    inputs, out = Path(args.out).resolve() / "inputs", Path(args.out).resolve() / "outputs"
    inputs.mkdir(parents=True, exist_ok=True)
    print(f"sample: {mouse.path}")
    volume = tifffile.imread(mouse.path)
    geometry = Geometry(spacing=mouse.spacing, unit=mouse.unit, orientation=mouse.orientation)
    truth = make_deformation(to_ants_image(volume, geometry), inputs / "truth")
    moved = deform(volume, geometry, truth)
    if not _holds_array(inputs / "moved.zarr", moved):  # a re-run keeps it, so the flow resumes instead of refusing
        zarr.save_array(str(inputs / "moved.zarr"), moved, overwrite=True)
    (inputs / "schedule.json").write_text(json.dumps(DEMO_SCHEDULE))
    print(f"moving: the same brain moved by a known affine and a smooth warp ({inputs / 'moved.zarr'})")
    print("running the register-brain flow: convert both, register coarse to fine, warp at full resolution\n")
    prefect_ready = _start_prefect(args.cluster)
    from flows.register_brain import register_brain

    as_read = {"spacing": list(mouse.spacing), "unit": mouse.unit, "orientation": mouse.orientation}  # a TIFF says none of it
    with prefect_ready():
        state = register_brain(
            fixed={"uri": str(mouse.path), **as_read}, moving={"uri": str(inputs / "moved.zarr"), **as_read}, out=str(out),
            registration={"schedule": str(inputs / "schedule.json")}, chunks=64, cluster=args.cluster, return_state=True,
        )  # fmt: skip
    code = _print_stages(state)
    if code:
        return code
    manifest = json.loads((out / "transform" / "manifest.json").read_text())
    for step in manifest["steps"]:
        _print_step(step)

    brain = np.argwhere(volume > volume.mean())[::200]
    image = to_ants_image(volume, geometry)
    points = np.array([image.origin]) + (brain[:, ::-1] * np.asarray(image.spacing)) @ np.asarray(image.direction).T
    forward = [str(out / "transform" / p) for p in manifest["outputs"]["forward"]]
    residual = residual_um(points, forward, truth)
    affine_only = residual_um(points, [str(out / "transform" / "forward" / "affine.mat")], truth)
    print(
        f"\nerror of the recovered mapping on brain voxels: median {np.median(residual):.0f} um "
        f"(affine only: {np.median(affine_only):.0f} um), 95th percentile {np.percentile(residual, 95):.0f} um"
    )
    moved = zarr.open_array(str(out / "moving.ome.zarr" / "0"))[:]
    warped = zarr.open_array(str(out / "warped.ome.zarr" / "0"))[:]
    print(f"NCC with the original brain: moved copy {_ncc(volume, moved):.3f}, warped back {_ncc(volume, warped):.3f}")
    print(f"outputs in {out}: fixed.ome.zarr, moving.ome.zarr, transform/ (manifest.json, steps/*/qc.png), warped.ome.zarr, report.md")
    return _validate(argparse.Namespace(path=str(out / "warped.ome.zarr")))


def _holds_array(path: Path, data: Any) -> bool:
    """Whether the zarr array at ``path`` holds exactly ``data``."""
    import numpy as np
    import zarr

    try:
        stored = zarr.open_array(str(path), mode="r")
    except Exception:  # missing or unreadable: write it afresh
        return False
    return stored.shape == data.shape and stored.dtype == data.dtype and bool(np.array_equal(stored[:], data))


def _ncc(a: Any, b: Any) -> float:
    import numpy as np

    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _print_step(step: dict) -> None:
    key = "ncc" if step["metric"] in ("cc", "meansquares") else "mi"
    verdict = "" if step["accepted"] else "  DISCARDED (metric got worse)"
    folding = f", jacobian min {step['jacobian_min']:.3f}" if "jacobian_min" in step else ""
    print(f"{step['step']}: {key} {step['before'][key]:.4f} -> {step['after'][key]:.4f}, {step['seconds']:.1f} s{folding}{verdict}", flush=True)


def _path_or_uri(text: str) -> str:
    return text if "://" in text else os.path.abspath(text)


def _start_prefect(cluster: str | None = None, verbose: bool = False) -> Callable[[], ContextManager[None]]:
    """Quiet Prefect's console; when no Prefect server is configured, adopt the temporary
    one `main` launched ahead, or launch it now: the one Prefect would start for the first
    flow run (`flows.temporary_server`: it comes up, about 3 s, while the flows are
    imported); and start the Dask ``cluster`` the flow will take over meanwhile
    (`flows.cluster.prestart_cluster`).
    Returns ``ready``: the context to run the flow in (it waits for the server first;
    a run on the temporary server, which nothing else watches, sends no heartbeats)."""
    global _EARLY_SERVER
    _quiet_prefect()
    # The terminal shows a progress bar and warnings; every log line still reaches the
    # Prefect API (and the UI) whatever the console shows.
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, get_current_settings

    server = None
    if not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        from flows.temporary_server import TemporaryServer

        # the one `main` launched ahead, from the same environment and profile, or one now
        server, _EARLY_SERVER = _EARLY_SERVER, None
        if server is None:
            server = TemporaryServer(get_current_settings().to_environment_variables(exclude_unset=True))
        _use_prefect_api(server.api_url)  # this process and the workers it starts
    _stop_unused_early_server()  # Prefect's settings name a server (a profile's PREFECT_API_URL)
    from flows.cluster import close_prestarted, cluster_spec, prestart_cluster, without_flow_heartbeats
    from scalereg.logs import CONSOLE_VARIABLE, LOG_FILE_VARIABLE, one_line_console

    # the workers started for this command print to the terminal as it does, and log to its file (tasks/worker_preload.py)
    cluster_spec(cluster)  # a profile that does not load: one line now, before any flow runs
    _set_environment(CONSOLE_VARIABLE, "one-line")
    if _LOG_FILE is not None:
        _set_environment(LOG_FILE_VARIABLE, str(_LOG_FILE))
    prestart_cluster(cluster)  # `main` closes it if no flow takes it over

    @contextmanager
    def ready() -> Iterator[None]:
        _CLEANUPS.append(one_line_console())  # Prefect's console: warnings only, one line each; errors are ours to print
        if server is None:
            yield
            return
        server.wait()
        if server.api_url != os.environ["PREFECT_API_URL"]:  # its port was taken: launched again on another
            _use_prefect_api(server.api_url)
            close_prestarted()  # its workers were told the old address; the flow starts the cluster afresh
        with without_flow_heartbeats():
            yield

    return ready


def _set_environment(name: str, value: str) -> None:
    """Set an environment variable for the rest of this command (restored when it ends)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    _CLEANUPS.append(lambda: os.environ.__setitem__(name, previous) if previous is not None else os.environ.pop(name, None))


# Prefect's temporary server, launched by `main` before a command that runs flows has
# imported Prefect; `_start_prefect` adopts it or `main` stops it.
_EARLY_SERVER: Any = None


def _quiet_prefect() -> None:
    # Without internet, telemetry would only fill the log with errors.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _launch_temporary_server_early() -> None:
    """For a command that runs flows when no Prefect setting may name a server
    (`_may_name_a_server`): launch Prefect's temporary server now, so that it starts
    (about 3 CPU s) while this process imports Prefect (1.3-1.8 s on one core) and plans,
    on the core those leave idle; `_start_prefect` adopts it.  The server reads the same
    environment and Prefect profile as this process will.  Measured on `scalereg convert`
    of the 19 MB sample brain on two cores: 10.5-11.7 s against 11.9-12.5 s."""
    global _EARLY_SERVER
    # with Prefect imported already (main called from Python) nothing is gained by it
    if _EARLY_SERVER is not None or "prefect" in sys.modules or _may_name_a_server():
        return
    from flows.temporary_server import TemporaryServer

    _quiet_prefect()
    _EARLY_SERVER = TemporaryServer({})


_EPHEMERAL_SWITCHES = ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")


def _may_name_a_server() -> bool:
    """Whether Prefect's settings may name an API server, or turn its temporary server
    off, as far as a look without importing Prefect tells: the environment, the active
    profile (PREFECT_PROFILE, else the profiles file's `active`; PREFECT_HOME/profiles.toml
    unless PREFECT_PROFILES_PATH says otherwise), and settings files in the working
    directory.  Errs toward yes: then `_start_prefect` decides, as it always did."""
    settings: dict[str, Any] = dict(os.environ)
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        import tomllib

        data = tomllib.loads(profiles.read_text()) if profiles.exists() else {}
        active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
        settings = {**{k: str(v) for k, v in data.get("profiles", {}).get(active, {}).items()}, **settings}
        pyproject = Path("pyproject.toml")
        if Path("prefect.toml").exists() or Path(".env").exists() or (pyproject.exists() and "[tool.prefect" in pyproject.read_text()):
            return True
    except (OSError, ValueError):  # unreadable, or not TOML: Prefect will say so
        return True
    return bool(settings.get("PREFECT_API_URL")) or any(settings.get(name, "").lower() in ("0", "false") for name in _EPHEMERAL_SWITCHES)


def _stop_unused_early_server() -> None:
    global _EARLY_SERVER
    server, _EARLY_SERVER = _EARLY_SERVER, None
    if server is not None:
        server.stop()


def _use_prefect_api(url: str) -> None:
    import prefect.context

    os.environ["PREFECT_API_URL"] = url
    prefect.context.refresh_global_settings_context()  # Prefect's settings read the environment once


if __name__ == "__main__":
    raise SystemExit(main())
