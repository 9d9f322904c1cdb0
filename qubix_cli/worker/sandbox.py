"""The sandbox for renters' code on Linux: bubblewrap (`bwrap`).

Inside it a job sees the system read-only (/usr, /opt, the /bin and /lib links, and only
the parts of /etc that programs need: never shadow, ssh/ or sudoers), a private writable
work dir (`/job`, its current directory and $HOME) and a private /tmp, a fresh /dev with
only the device nodes of the GPUs it was given, its own PID namespace (the whole tree
dies when the sandbox does) and, unless it asked for the network and
the provider allows it, no network at all. The provider's home, the worker's state dir
and everything else on the machine are simply not there. A worker that runs as root runs
the sandbox as an unprivileged host user (worker/jobuser.py): no job process is root.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from typing import IO, Any, Sequence

from qubix_cli.worker import jobuser

SYSTEM_DIRS = ("/usr", "/opt")
# What of /etc a job sees: names resolution, users and groups by name, TLS roots, the
# dynamic linker's cache, alternatives, Python's and the GPU stacks' (ICD) config. Never
# shadow, gshadow, ssh/, sudoers, the machine id or the provider's pip config.
ETC = (
    "resolv.conf", "hosts", "host.conf", "nsswitch.conf", "gai.conf", "services",
    "protocols", "passwd", "group", "localtime", "timezone", "os-release", "mime.types",
    "ssl", "ca-certificates", "ca-certificates.conf", "pki", "crypto-policies",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "fonts", "python3*",
    "OpenCL", "vulkan", "glvnd", "nvidia",
)  # fmt: skip
LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # /usr links or real dirs
WORK = "/job"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEV = "/dev"  # where the GPUs' device nodes are looked for
# Device nodes that every NVIDIA GPU needs beside its own /dev/nvidiaN.
NVIDIA_SHARED = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
# bwrap's own environment, on the host: the worker's choice, never anything of the job's
# (a job's LD_PRELOAD must not reach a process outside the sandbox).
HOST_ENV = {"PATH": PATH, "LANG": "C.UTF-8"}


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether bwrap is on PATH and can really make a sandbox here (some systems forbid
    the user namespaces it needs): checked once, by running `true` in one, as a job."""
    if shutil.which("bwrap") is None:
        return False
    try:
        with tempfile.TemporaryDirectory(prefix="qubix-sandbox-") as empty:
            jobuser.give(empty)
            wrapped = wrap(["true"], work_dir=empty, hide=[], devices=[], network=False)
            done = run(wrapped, {}, timeout_s=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(done.returncode == 0)


def wrap(
    argv: list[str],
    work_dir: str,
    hide: list[str],
    devices: list[str],
    network: bool,
    binds: Sequence[tuple[str, str]] = (),
    status: Status | None = None,
) -> list[str]:
    """The bwrap command line that runs `argv` in the sandbox: `work_dir` is bound
    writable on /job; `hide` are host paths that must not be seen even if they lie in a
    system dir (the provider's home, the worker's state dir); `devices` are bound in;
    `binds` are (host path, path inside) bound read-only (a Python, an environment);
    `status` hears whether the program ran."""
    args = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session"]
    if network:
        args.append("--share-net")
    for path in SYSTEM_DIRS + etc_paths():
        args += ["--ro-bind-try", path, path]
    for path in LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in hide:
        if any(_under(path, root) for root in SYSTEM_DIRS):
            args += ["--tmpfs", path]
    if devices:
        args += ["--ro-bind-try", "/sys", "/sys"]  # GPU libraries read the PCI topology
    for node in devices:
        args += ["--dev-bind", node, os.path.join("/dev", os.path.relpath(node, DEV))]
    for host, inside in binds:
        args += ["--ro-bind", host, inside]
    if status is not None:
        args += ["--json-status-fd", str(status.fd)]
    args += ["--bind", work_dir, WORK, "--chdir", WORK, "--"]
    return args + argv


class Status:
    """bwrap's word on one sandbox (`--json-status-fd`): it tells the program's exit code
    only if the program ran, so a sandbox that could not be set up (a mount that failed)
    is told from a job that failed. Pass `fd` to bwrap, then call `spawned`."""

    def __init__(self) -> None:
        self._read, self.fd = os.pipe()

    def spawned(self) -> None:
        os.close(self.fd)  # bwrap holds the other end now

    def ran(self) -> bool:
        """Whether the program ran to an exit of its own (read once bwrap has ended)."""
        os.set_blocking(self._read, False)
        data = b""
        try:
            while chunk := os.read(self._read, 65536):
                data += chunk
        except BlockingIOError:
            pass
        finally:
            os.close(self._read)
        return b'"exit-code"' in data


def run(wrapped: list[str], env: dict[str, str], timeout_s: float) -> Any:
    """Run `wrapped` (from `wrap`) to its end as `hand_over` says, its output captured: the
    completed process. OSError or SubprocessError (a timeout) if it cannot."""
    command, handed, launch = hand_over(wrapped, env)
    with handed:
        return subprocess.run(
            command,
            cwd="/",
            env=HOST_ENV,
            pass_fds=(handed.fileno(),),
            preexec_fn=launch,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )


def etc_paths() -> tuple[str, ...]:
    """The paths of ETC on this machine (a pattern may name several)."""
    found = (sorted(glob.glob(os.path.join("/etc", name))) for name in ETC)
    return tuple(path for paths in found for path in paths)


def hand_over(
    wrapped: list[str], env: dict[str, str]
) -> tuple[list[str], IO[bytes], jobuser.Launch]:
    """bwrap's command line for `wrapped` (from `wrap`): its options and the job's
    environment, set inside the sandbox only (`--clearenv`, `--setenv`), go in a file it
    reads (`--args FD`, an unlinked 0600 file to pass on), so that no variable of the
    job's is in a host process's environment or command line (every local user reads
    /proc/PID/cmdline); the program and its arguments follow `--`. Start it
    with HOST_ENV, a working directory the job cannot write, and the returned Launch run
    in the child before exec (the job's user: worker/jobuser.py). ValueError if an
    argument holds a NUL byte (it would split into options of bwrap's)."""
    wrapped, launch = jobuser.prepare(wrapped)
    end = wrapped.index("--")  # bwrap takes the program itself from its command line
    pairs = [part for name, value in env.items() for part in ("--setenv", name, value)]
    arguments = ["--clearenv", *pairs, *wrapped[1:end]]
    if any("\0" in part for part in arguments):
        raise ValueError("an environment variable of the job holds a NUL byte")
    file = tempfile.TemporaryFile()
    file.write(b"".join(part.encode() + b"\0" for part in arguments))
    file.seek(0)
    return [wrapped[0], "--args", str(file.fileno()), *wrapped[end:]], file, launch


def _under(path: str, root: str) -> bool:
    return os.path.realpath(path) == root or os.path.realpath(path).startswith(root + "/")


def device_nodes(gpus: list[dict[str, Any]], assigned: list[int]) -> list[str]:
    """The device nodes of the assigned GPUs (positions in `gpus`) that exist on this
    machine: /dev/nvidiaN and the shared NVIDIA nodes, or /dev/dri's card and render nodes
    (and /dev/kfd for AMD). A GPU's N is its position among the GPUs of its vendor."""
    nodes: list[str] = []
    for position in assigned:
        vendor, n = vendor_index(gpus, position)
        if vendor == "nvidia":
            nodes += [f"nvidia{n}", *NVIDIA_SHARED, *_caps()]
        else:
            nodes += [f"dri/card{n}", f"dri/renderD{128 + n}"]
            nodes += ["kfd"] if vendor == "amd" else []
    found = [os.path.join(DEV, node) for node in dict.fromkeys(nodes)]
    return [node for node in found if os.path.exists(node)]


def _caps() -> list[str]:
    return [os.path.relpath(p, DEV) for p in sorted(glob.glob(os.path.join(DEV, "nvidia-caps/*")))]


def visible_devices(gpus: list[dict[str, Any]], assigned: list[int]) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES naming the assigned GPUs, for each of
    those vendors this machine has (empty when none of its GPUs was assigned: a job
    without GPUs must not take one that another job runs on)."""
    names = {"nvidia": "CUDA_VISIBLE_DEVICES", "amd": "ROCR_VISIBLE_DEVICES"}
    env: dict[str, list[str]] = {names[g["vendor"]]: [] for g in gpus if g["vendor"] in names}
    for position in assigned:
        vendor, n = vendor_index(gpus, position)
        if vendor in names:
            env[names[vendor]].append(str(n))
    return {name: ",".join(indices) for name, indices in env.items()}


def vendor_index(gpus: list[dict[str, Any]], position: int) -> tuple[str, int]:
    """A GPU's vendor and its index among that vendor's GPUs (what the vendor's tools and
    device nodes number it)."""
    vendor = gpus[position]["vendor"]
    return vendor, sum(1 for g in gpus[:position] if g["vendor"] == vendor)


def python_binds() -> list[tuple[str, str]]:
    """The worker's own Python (its environment and the installation under it), bound at
    the same paths, so that `python` jobs can run it: only where it is not in a system
    dir already (an installer's venv in the provider's home, say)."""
    paths = dict.fromkeys(os.path.realpath(p) for p in (sys.prefix, sys.base_prefix))
    return [(p, p) for p in paths if not any(_under(p, root) for root in SYSTEM_DIRS)]
