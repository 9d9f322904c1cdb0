"""`python qubix_worker.pyz run|detect ...`: the stand-alone worker, as the installers ship it.

`qubix worker run` and `qubix worker detect` call the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from qubix_cli.worker import AGENT_VERSION, guest, hardware, state
from qubix_cli.worker.agent import Agent, Config, Fatal, log, setup_logging
from qubix_cli.worker.client import Client, Transient, message
from qubix_cli.worker.jobs import Policy
from qubix_cli.worker.qubic import public_key


def run_worker(config: Config) -> int:
    """Run the worker until it is stopped; the exit code for the process. Why it stopped,
    when that was an error, is left in the state dir for `wait-online` (the installers)."""
    home = state.home()
    setup_logging(home)
    state.clear_stop_reason(home)
    try:
        return Agent(config).run()
    except (Fatal, ValueError) as exc:
        log.error("%s", exc)
        state.save_stop_reason(home, str(exc))
        return 2
    except BaseException as exc:
        state.save_stop_reason(home, f"the worker failed: {exc!r}")
        raise


def wait_online(state_dir: str, server: str, since: float, timeout_s: float) -> int:
    """Wait until `server` lists this worker (0), the worker has stopped (2, with why), or
    `timeout_s` has passed (1). What the installers run after they start the worker."""
    worker_id = state.default_worker_id(state_dir)
    client = Client(server, timeout_s=20)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reason = state.stop_reason(state_dir, since)
        if reason is not None:
            print(f"qubix: the worker stopped: {reason}")
            return 2
        path = f"/api/providers/check-new?workerId={worker_id}&since={since}&wait=2"
        try:
            status, answer = client.request("GET", path)
        except Transient:
            time.sleep(2)
            continue
        if status == 200 and answer.get("providers"):
            return 0
    return 1


def detect_text(report: dict) -> str:  # type: ignore[type-arg]
    lines = []
    for gpu in report["gpus"]:
        memory = "shared memory" if gpu.get("sharedMemory") else "VRAM"
        lines.append(
            f"GPU  {gpu['vendor']:<7}{gpu['model']}, {gpu['vramMb']} MB {memory}"
            + (f", driver {gpu['driver']}" if gpu.get("driver") else "")
            + (f", CUDA {gpu['cudaVersion']}" if gpu.get("cudaVersion") else "")
        )
    cpu = report["cpu"]
    lines.append(f"CPU  {cpu['model']}, {cpu['cores']} cores, {cpu['threads']} threads")
    lines.append(f"RAM  {report['ramMb']} MB")
    lines.append(f"Disk {report['storage']['freeGb']} GB free of {report['storage']['totalGb']} GB")
    lines.append(f"OS   {report['os']['system']} {report['os']['release']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


class _Help(argparse.HelpFormatter):
    """Help that begins "Usage:", as every other qubix command's does."""

    def add_usage(self, usage, actions, groups, prefix=None):  # type: ignore[no-untyped-def]
        super().add_usage(usage, actions, groups, "Usage: " if prefix is None else prefix)


def parser(prog: str = "qubix_worker") -> argparse.ArgumentParser:
    """The worker's command line: the one definition of its options, which both the zipapp
    and `qubix worker` parse."""
    parser = argparse.ArgumentParser(
        prog=prog, description="The Qubix worker agent.", formatter_class=_Help
    )
    parser.add_argument("--version", action="version", version=f"qubix-worker {AGENT_VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    detect = commands.add_parser(
        "detect", help="Print what hardware this machine has.", formatter_class=_Help
    )
    detect.add_argument("--json", action="store_true", help="Print the report as JSON.")
    commands.add_parser(
        "id", help="Print the worker id that `run` uses by default.", formatter_class=_Help
    )
    check = commands.add_parser(
        "check-address",
        help="Check a Qubic address's form and checksum (exit 2, with why, if it is wrong).",
        formatter_class=_Help,
    )
    check.add_argument("address")
    wait = commands.add_parser(
        "wait-online",
        help="Wait until the server lists this worker, or it has stopped (the installers).",
        formatter_class=_Help,
    )
    wait.add_argument("--server", required=True, help="The coordinator's URL.")
    wait.add_argument("--since", type=float, required=True, help="Unix time it was started.")
    wait.add_argument("--timeout", type=float, default=60.0, help="Seconds to wait at most.")
    pause = commands.add_parser(
        "pause",
        help="Take no new jobs (the running worker, through its state dir) until resumed.",
        description="Tell the worker of this state dir ($QUBIX_HOME, else ~/.qubix) to take "
        "no new jobs, until `resume` or for a while.",
        formatter_class=_Help,
    )
    pause.add_argument(
        "--for",
        dest="duration",
        type=_duration,
        help="Resume by itself after this long: 45s, 30m, 2h, 1d (default: until `resume`).",
    )
    pause.add_argument(
        "--hand-back",
        action="store_true",
        help="Hand the running jobs back at once (they go to other workers, no attempt spent) "
        "instead of letting them finish.",
    )
    commands.add_parser(
        "resume",
        help="Take jobs again after `pause`.",
        description="Tell the worker of this state dir ($QUBIX_HOME, else ~/.qubix) to take "
        "jobs again after `pause`.",
        formatter_class=_Help,
    )
    trial = commands.add_parser("update-trial", help=argparse.SUPPRESS)
    trial.add_argument("pyz")
    trial.add_argument("run_args", nargs=argparse.REMAINDER)
    commands.add_parser(
        "deregister",
        help="Remove this worker from its server (what --uninstall does first).",
        formatter_class=_Help,
    )
    prefs = commands.add_parser(
        "preferences",
        help="Show or set when the worker may work (the running one applies them).",
        description="Show the preferences kept in preferences.json in this state dir "
        "($QUBIX_HOME, else ~/.qubix), or change the ones given; the running worker applies "
        "them within 10 s (--max-gpus and --max-cpu-percent when it starts).",
        formatter_class=_Help,
    )
    prefs.add_argument("--reset", action="store_true", help="Forget all preferences first.")
    preference_options(prefs)
    run = commands.add_parser(
        "run",
        help="Register and run jobs until stopped.",
        description="Register with the server, heartbeat, and run jobs until stopped "
        "(Ctrl+C or SIGTERM finishes the current job first; a second one cancels it).",
        formatter_class=_Help,
    )
    _env_option(run, "--server", "QUBIX_SERVER", "The coordinator's URL.")
    _env_option(run, "--qubic-address", "QUBIC_ADDRESS", "Your 60-letter Qubic address.")
    run.add_argument("--name", help="A name shown in the marketplace.")
    run.add_argument("--location", help="Where the machine is, shown in the marketplace.")
    run.add_argument(
        "--price",
        type=float,
        metavar="PER_HOUR",
        help="What you ask an hour of work, in the coordinator's unit of account (default 0; "
        "the coordinator's operator sets the most one may ask).",
    )
    run.add_argument("--worker-id", help="Override the worker id (default: from the MAC).")
    run.add_argument(
        "--no-user-jobs",
        action="store_true",
        help="Refuse jobs that run the renter's own code (`command`, `python`), even in the "
        "sandbox.",
    )
    run.add_argument(
        "--allow-unsandboxed",
        "--allow-command",
        dest="allow_unsandboxed",
        action="store_true",
        help="Where bubblewrap cannot run (not installed, macOS, Windows), run renters' "
        "code anyway, as your user, without a sandbox. Where it can, jobs always run in it.",
    )
    run.add_argument(
        "--allow-network-jobs",
        action="store_true",
        help="Give jobs that ask for it the public internet, through an HTTP proxy that "
        "refuses loopback, private and link-local addresses (by default no job has any).",
    )
    run.add_argument(
        "--env-cache-gb",
        type=float,
        default=20.0,
        help="Disk kept for python jobs' environments; the least recently used go first "
        "(default 20).",
    )
    run.add_argument(
        "--update-trial", metavar="FILE", help=argparse.SUPPRESS
    )  # an update on trial: register, heartbeat, write FILE, exit (worker/update.py)
    run.add_argument("--update-failed", metavar="VERSION", help=argparse.SUPPRESS)
    preference_options(run)
    run.add_argument("--burst", action="store_true", help="Run what is queued, then exit.")
    run.add_argument("--max-jobs", type=_positive, help="Exit after this many jobs.")
    return parser


def preference_options(parser: argparse.ArgumentParser) -> None:
    """The provider's preferences (worker/guest.py), which `run` and `preferences` take."""
    parser.add_argument(
        "--schedule",
        help="When it may work, e.g. 'mon-fri 18:00-08:00; sat,sun 00:00-24:00' (local time; "
        "kept in preferences.json in its state dir; '' for any time).",
    )
    parser.add_argument(
        "--not-on-battery",
        action="store_true",
        default=None,
        help="Take no work while the machine runs on battery (kept in preferences.json).",
    )
    parser.add_argument(
        "--idle-only",
        type=int,
        metavar="MINUTES",
        help="Take work only when nobody has used the computer for this many minutes; the "
        "jobs are handed back when someone does (0: any time; kept in preferences.json).",
    )
    parser.add_argument(
        "--max-gpus",
        type=int,
        metavar="N",
        help="Offer only the first N GPUs; the provider keeps the others (kept in "
        "preferences.json; read at start).",
    )
    parser.add_argument(
        "--max-gpu-temp",
        type=int,
        metavar="CELSIUS",
        help="Take no work while a GPU is at least this hot; again 5 degrees below "
        "(kept in preferences.json).",
    )
    parser.add_argument(
        "--max-cpu-percent",
        type=int,
        metavar="PERCENT",
        help="Let jobs use at most this share of the CPU threads (on Linux they are held to "
        "that many CPUs; kept in preferences.json; read at start).",
    )


def _env_option(parser: argparse.ArgumentParser, flag: str, env: str, text: str) -> None:
    default = os.environ.get(env)
    parser.add_argument(flag, default=default, required=not default, help=f"{text} (${env})")


def _duration(text: str) -> float:
    """Seconds in `30m`, `2h`, `1d` or `45s`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:].lower()
    try:
        value = float(number) * units[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError("write it as 45s, 30m, 2h or 1d") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def address_problem(address: str) -> str | None:
    """Why an address is not a Qubic address, or None."""
    try:
        public_key(address)
    except ValueError as exc:
        return str(exc)
    return None


def deregister(state_dir: str) -> int:
    """Remove this worker's record from its server with its own token, so that the same id
    can register again after a reinstall. 0 when it is gone (or was never registered)."""
    saved = state.load_credentials(state_dir)
    if not saved or not saved.get("token"):
        print("qubix: this worker was not registered; nothing to deregister")
        return 0
    client = Client(saved["server"], timeout_s=10)
    client.token = saved["token"]
    worker_id = saved["workerId"]
    try:
        status, answer = client.request("DELETE", f"/api/providers/{worker_id}")
    except Transient as exc:
        status, answer = 0, {"message": str(exc)}
    if status in (204, 404):
        print(f"qubix: worker {worker_id} deregistered from {saved['server']}")
        return 0
    print(
        f"qubix: could not deregister worker {worker_id} from {saved['server']} "
        f"({message(answer)}); its operator can remove it, or it is forgotten after a "
        "while offline"
    )
    return 1


def provider_command(args: argparse.Namespace) -> int:
    """`pause`, `resume` and `preferences`: what the provider tells the worker running on
    this machine, through its state dir."""
    if args.command == "preferences":
        problem = save_preferences(args, keep=not args.reset)
        try:
            shown = guest.load_strict(state.home())
        except guest.PreferenceError as exc:
            problem = problem or str(exc)
        if problem:
            print(f"qubix: error: {problem}", file=sys.stderr)
            return 2
        print(json.dumps(shown, indent=2, sort_keys=True))
        return 0
    if state.load_credentials(state.home()) is None:
        print(
            f"qubix: error: no worker has registered from {state.home()}: set QUBIX_HOME to "
            "the state dir of the worker to pause or resume",
            file=sys.stderr,
        )
        return 1
    if args.command == "pause":
        until = time.time() + args.duration if args.duration else None
        state.pause(state.home(), until, args.hand_back)
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(until)) if until else None
        running = "hands back its running jobs" if args.hand_back else "finishes its running jobs"
        print(
            f"qubix: paused until {when or 'you resume it'}; the worker {running}, "
            "and takes no new ones"
        )
        return 0
    was = state.resume(state.home())
    print("qubix: resumed: the worker takes jobs again" if was else "qubix: it was not paused")
    return 0


def main(argv: list[str] | None = None, prog: str = "qubix_worker") -> int:
    args = parser(prog).parse_args(argv)
    if args.command == "id":
        print(state.default_worker_id(state.home()))
        return 0
    if args.command == "check-address":
        problem = address_problem(args.address)
        if problem:
            print(f"qubix: error: {problem}", file=sys.stderr)
            return 2
        return 0
    if args.command == "wait-online":
        return wait_online(state.home(), args.server, args.since, args.timeout)
    if args.command == "deregister":
        return deregister(state.home())
    if args.command in ("pause", "resume", "preferences"):
        return provider_command(args)
    if args.command == "update-trial":
        from qubix_cli.worker import update

        setup_logging(state.home())
        return update.run_trial(args.pyz, args.run_args)
    if args.command == "detect":
        report = hardware.detect()
        print(json.dumps(report, indent=2) if args.json else detect_text(report))
        return 0
    problem = save_preferences(args)
    if problem:
        print(f"qubix: error: {problem}", file=sys.stderr)
        return 2
    config = Config(
        server=args.server,
        qubic_address=args.qubic_address,
        name=args.name,
        location=args.location,
        price_per_hour=args.price,
        worker_id=args.worker_id,
        policy=Policy(
            user_jobs=not args.no_user_jobs,
            allow_unsandboxed=args.allow_unsandboxed,
            allow_network=args.allow_network_jobs,
        ),
        burst=args.burst,
        env_cache_gb=args.env_cache_gb,
        max_jobs=args.max_jobs,
        update_trial=args.update_trial,
        update_failed=args.update_failed,
        run_args=_restart_args(sys.argv[1:] if argv is None else argv),
    )
    return run_worker(config)


def save_preferences(args: argparse.Namespace, keep: bool = True) -> str | None:
    """Write the preferences given as options into preferences.json (the others stay as
    they are, unless not `keep`); what is wrong with them, if anything (then nothing is
    written)."""
    given = {
        "schedule": args.schedule,
        "notOnBattery": args.not_on_battery,
        "idleMinutes": args.idle_only,
        "maxGpus": args.max_gpus,
        "maxGpuTempC": args.max_gpu_temp,
        "maxCpuPercent": args.max_cpu_percent,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    if not changes and keep:
        return None
    home = state.home()
    try:
        guest.check(changes)
        prefs = {**(guest.load_strict(home) if keep else {}), **changes}
    except guest.PreferenceError as exc:
        return str(exc)
    guest.save(home, prefs)
    return None


def _restart_args(argv: list[str]) -> list[str]:
    """The command line to start this worker again with: without the update flags."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--update-trial", "--update-failed"):
            skip = True
        elif not arg.startswith(("--update-trial=", "--update-failed=")):
            kept.append(arg)
    return kept


if __name__ == "__main__":
    sys.exit(main())
