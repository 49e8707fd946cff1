"""Run model-written code in a contained subprocess.

Each call gets a fresh temporary directory (deleted afterwards), a minimal environment and
resource limits, and ends in a :class:`SandboxResult` whose ``status`` says what happened.

How the child is contained (probed once per process and recorded in ``SandboxResult.isolation``):

``unshare --net --pid --fork --kill-child`` (when the ``unshare`` binary works here; as non-root with
``--user --map-root-user`` added)
    A new network namespace (only a downed loopback: every connect fails, 127.0.0.1 included) and a
    new PID namespace. Killing the namespace's first process kills everything in it, so a fork bomb
    whose children called ``setsid`` still dies with the run.
A launcher (a few lines of Python, this module's ``_LAUNCHER``) as the namespace's first process
    It stays root and unlimited, forks the program, reaps orphans and reports the program's exit
    status through a private pipe. In the child it sets the rlimits (CPU, AS, NPROC, FSIZE,
    NOFILE, CORE=0) and, when we are root, drops to an unprivileged uid before ``exec``. The
    program therefore sees the launcher as its parent (pid 1 in the namespace): killing its parent
    fails with EPERM, and the test process is never its parent.
An unprivileged uid of its own (root only)
    RLIMIT_NPROC is not enforced for root, so as root the child runs as a uid from a private range
    (200000..), reserved with a lock file so no two concurrent sandboxes share it: the process
    limit then counts this sandbox's processes only, the child cannot signal our processes, and it
    cannot write to root-owned directories (the repo, ``$HOME``, any 0755 directory we own).
    As non-root the child keeps our uid: the process limit becomes our current process count plus
    ``max_procs``, the PID namespace (when available) hides our processes from it, but it can write
    wherever we can.
    When no PID namespace is available, every process of that uid is killed after the run
    (``kill(-1)`` as that uid).
A private file system (root, with ``unshare --mount --mount-proc`` added)
    Before forking, the launcher builds a new root in its mount namespace and ``pivot_root``s into
    it: one tmpfs of ``max_disk_mb`` MB (the total disk the program can fill, across all its files)
    holding the program's directory (a copy of the files given), ``/tmp`` and ``/dev/shm``; read-only
    bind mounts of ``/usr`` (and the ``/bin``, ``/lib``... links), the loader's files in ``/etc``, the
    Python installation and ``ro_paths``; ``/dev/null``, ``zero``, ``full``, ``random``, ``urandom``
    (plus ``/dev/nvidia*`` for ``gpu``); and a ``/proc`` of the new PID namespace. The host's files,
    processes, ``/tmp``, ``/dev/shm`` and the Unix sockets in them are not there, and everything the
    program wrote disappears with the namespace. Without it (``"filesystem: host (NOT isolated)"``)
    world-readable host files and the world-writable ``/tmp`` and ``/dev/shm`` stay reachable, and the
    first run logs one warning line saying so.
Without ``unshare``
    No network namespace: for Python programs a ``sitecustomize``-style guard replaces
    ``socket.socket`` with one that raises (a Python-level guard, not a security boundary: ctypes
    can bypass it); other languages get no network isolation. ``isolation`` then starts with
    ``"NOT a security boundary: ..."`` and the first run logs one warning line saying so.

Wall time is enforced by killing the whole process group (the child runs in a new session), output
is read while the program runs and the program is killed once ``max_output_kb`` is exceeded, so our
memory stays bounded whatever it prints.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SandboxResult",
    "check_python_program",
    "run_sandboxed",
    "sandbox_isolation",
]

# Statuses, from the most to the least specific.
STATUSES = (
    "ok",  # exit code 0
    "failed",  # non-zero exit (an exception, a failed assert, a compile error)
    "timeout",  # wall-time or CPU-time limit
    "memory",  # RLIMIT_AS hit (MemoryError, std::bad_alloc, ENOMEM)
    "output_limit",  # stdout + stderr exceeded max_output_kb
    "process_limit",  # fork/clone refused by the process limit
    "file_limit",  # a file exceeded max_file_mb
    "killed",  # ended by a signal (SIGSEGV, SIGKILL, ...)
    "error",  # the harness could not run the program at all
)

_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_UID_BASE, _UID_SPAN = 200_000, 50_000
_LOCK_DIR = Path(tempfile.gettempdir()) / "mot-sandbox-uids"

# Runs as root (or as the caller) inside the namespaces; argv[1] is a JSON spec.
_LAUNCHER = r"""
import json, os, resource, signal, sys
spec = json.loads(sys.argv[1])
status_fd = spec["status_fd"]
os.set_inheritable(status_fd, False)
fs = spec.get("fs")
if fs:
    import ctypes, shutil, stat
    libc = ctypes.CDLL(None, use_errno=True)
    def _c(text):
        return None if text is None else text.encode()
    def mount(src, dst, fstype, flags, data=None):
        if libc.mount(_c(src), _c(dst), _c(fstype), ctypes.c_ulong(flags), _c(data)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), dst)
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
    root = fs["root"]
    mount(None, "/", None, REC | PRIVATE)
    mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=%dm,mode=755" % fs["disk_mb"])
    def place(path, directory):
        target = root + path
        if directory:
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        return target
    for path in fs["links"]:
        os.makedirs(os.path.dirname(root + path), exist_ok=True)
        os.symlink(os.readlink(path), root + path)
    for path in fs["ro"]:
        target = place(path, os.path.isdir(path))
        mount(path, target, None, BIND | REC)
        mount(None, target, None, REMOUNT | BIND | RDONLY | NOSUID)
    for path in fs["devices"]:
        mount(path, place(path, False), None, BIND)
    for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                     ("stderr", "/proc/self/fd/2")):
        os.symlink(to, root + "/dev/" + name)
    for path in ("/tmp", "/dev/shm"):
        os.makedirs(root + path, exist_ok=True)
        os.chmod(root + path, 0o1777)
    os.makedirs(root + "/proc", exist_ok=True)
    mount("proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC)
    shutil.copytree(spec["cwd"], root + spec["cwd"], symlinks=True)
    if spec["uid"] is not None:
        for dirpath, dirnames, filenames in os.walk(root + spec["cwd"]):
            for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                os.lchown(name, spec["uid"], spec["uid"])
    os.chdir(root)
    os.mkdir(".old-root")
    if libc.syscall(fs["pivot_root_nr"], b".", b".old-root") != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "pivot_root")
    os.chdir("/")
    if libc.umount2(b"/.old-root", 2) != 0:  # MNT_DETACH
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "umount /.old-root")
    os.rmdir("/.old-root")
pid = os.fork()
if pid == 0:
    try:
        for name, soft, hard in spec["limits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        if spec["uid"] is not None:
            os.setgroups([])
            os.setgid(spec["uid"])
            os.setuid(spec["uid"])
        os.chdir(spec["cwd"])
        os.execve(spec["argv"][0], spec["argv"], spec["env"])
    except BaseException as exc:
        os.write(2, ("sandbox launcher: %r\n" % (exc,)).encode())
    os._exit(126)
status = None
while status is None:
    try:
        done, st = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    if done == pid:
        status = st
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
report = {"cpu_s": usage.ru_utime + usage.ru_stime}
if status is not None and os.WIFSIGNALED(status):
    report["signal"] = os.WTERMSIG(status)
elif status is not None:
    report["exit"] = os.WEXITSTATUS(status)
os.write(status_fd, json.dumps(report).encode())
if spec["sweep_uid"] is not None:
    os.setuid(spec["sweep_uid"])
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass
os._exit(0)
"""

# Python-level network guard used only when no network namespace is available.
_SOCKET_GUARD = r"""
import socket as _socket_mod, _socket
class _DeniedSocket(_socket_mod.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError(1, "network access is disabled in the sandbox")
_socket_mod.socket = _DeniedSocket
_socket.socket = _DeniedSocket
_socket_mod.socketpair = _socket_mod.create_connection = _socket_mod.create_server = _DeniedSocket
del _DeniedSocket, _socket_mod, _socket
"""


@dataclass
class SandboxResult:
    status: str
    returncode: int | None
    stdout: str
    stderr: str
    reason: str
    wall_s: float
    isolation: tuple[str, ...] = field(default_factory=tuple)
    truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class _Isolation:
    unshare_prefix: tuple[str, ...] | None  # None: no namespaces
    drop_uid: bool  # root: run the child as a private uid
    python: str  # interpreter the sandboxed uid can run
    private_fs: bool = False  # root + mount namespace: private root (tmpfs + read-only binds), own /proc

    def labels(self, network: bool, language: str) -> tuple[str, ...]:
        out = ["rlimits", "new-session"]
        if self.unshare_prefix is None:
            out.append("NOT a security boundary: no unshare (rlimits, uid and a Python socket guard only)")
        if self.private_fs:
            out.append("filesystem: private (read-only system view, size-limited tmpfs scratch, own /tmp, /dev/shm)")
            out.append("proc: private")
        else:
            out.append("filesystem: host (NOT isolated)")
        if self.unshare_prefix is not None:
            out.append("pid-namespace")
            out.append("network: allowed" if network else "network: namespace")
        elif network:
            out.append("network: allowed")
        elif language == "python":
            out.append("network: python-socket-guard")
        else:
            out.append("network: NOT isolated (no unshare)")
        out.append("uid: private" if self.drop_uid else "uid: caller")
        return tuple(out)


def _probe(argv: list[str], timeout: float = 10.0) -> bool:
    try:
        return (
            subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def _isolation() -> _Isolation:
    """Probe once what this machine allows (see the module docstring)."""
    is_root = os.geteuid() == 0
    prefix: tuple[str, ...] | None = None
    unshare = shutil.which("unshare")
    if unshare and os.environ.get("MOT_SANDBOX_NO_UNSHARE") != "1":
        base = [unshare] + ([] if is_root else ["--user", "--map-root-user"])
        candidate = (*base, "--net", "--pid", "--fork", "--kill-child", "--")
        if _probe([*candidate, "true"]):
            prefix = candidate
    if prefix is not None:  # a mount namespace with its own /proc, where allowed
        with_mount = (*prefix[:-5], "--mount", "--mount-proc", *prefix[-5:])
        if _probe([*with_mount, "true"]):
            prefix = with_mount
    python = sys.executable
    if is_root:
        # the interpreter must start as the unprivileged uid (e.g. pyenv under a 0700 /root)
        for cand in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
            if cand and _probe(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    "import os,sys; os.setgroups([]); os.setgid(65534); os.setuid(65534);"
                    "os.execv(sys.argv[1], [sys.argv[1], '-c', 'import json, socket'])",
                    cand,
                ]
            ):
                python = cand
                break
    private_fs = False
    if is_root and prefix is not None and "--mount" in prefix and _PIVOT_ROOT_NR is not None:
        iso = _Isolation(unshare_prefix=prefix, drop_uid=True, python=python, private_fs=True)
        private_fs = _probe_private_fs(iso)
    return _Isolation(unshare_prefix=prefix, drop_uid=is_root, python=python, private_fs=private_fs)


def _probe_private_fs(iso: _Isolation) -> bool:
    """Can the launcher build the private root here (mount, tmpfs, bind, pivot_root)?"""
    base = Path(tempfile.mkdtemp(prefix="mot-sandbox-probe-"))
    work, root = base / "work", base / "root"
    work.mkdir()
    root.mkdir()
    spec = {"status_fd": 2, "limits": [], "uid": None, "sweep_uid": None, "cwd": str(work),
            "argv": [iso.python, "-I", "-S", "-c", "import os; assert not os.path.exists('/root/.cache')"],
            "env": {"PATH": _SAFE_PATH}, "fs": _fs_spec(iso, root, 16, gpu=False, ro_paths=())}
    try:
        return _probe([*iso.unshare_prefix, sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(spec)])
    finally:
        shutil.rmtree(base, ignore_errors=True)


# pivot_root(2) has no libc wrapper: the syscall number of this architecture
_PIVOT_ROOT_NR = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}.get(os.uname().machine)
# the read-only view: the system's programs and libraries and the loader's configuration
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/alternatives",
                 "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


def _fs_spec(iso: _Isolation, root: Path, disk_mb: int, *, gpu: bool, ro_paths: Sequence[str]) -> dict:
    """What the launcher mounts in the private root: read-only binds, symlinks, device nodes."""
    wanted = list(_SYSTEM_PATHS)
    python_prefix = Path(os.path.realpath(iso.python)).parents[1]
    wanted.append(str(python_prefix))
    wanted += [os.path.abspath(os.path.realpath(p)) for p in ro_paths]
    links, ro = [], []
    for path in wanted:
        if os.path.islink(path) and os.path.dirname(path) == "/":
            links.append(path)  # /bin -> usr/bin and friends: the same link inside
        elif os.path.exists(path) and not any(path == r or path.startswith(r.rstrip("/") + "/") for r in ro):
            ro.append(path)
    devices = [d for d in _DEVICES if os.path.exists(d)]
    if gpu:
        devices += sorted(str(d) for d in Path("/dev").glob("nvidia*") if d.is_char_device())
    return {"root": str(root), "disk_mb": int(disk_mb), "links": links, "ro": ro, "devices": devices,
            "pivot_root_nr": _PIVOT_ROOT_NR}


def sandbox_isolation() -> tuple[str, ...]:
    """What :func:`run_sandboxed` uses on this machine (network disabled, Python)."""
    return _isolation().labels(network=False, language="python")


class _UidLease:
    """A uid from the private range, held by an flock so concurrent sandboxes never share one."""

    def __init__(self) -> None:
        _LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        for _ in range(200):
            uid = _UID_BASE + random.randrange(_UID_SPAN)
            fd = os.open(_LOCK_DIR / f"{uid}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid, self._fd = uid, fd
            return
        raise RuntimeError("no free sandbox uid")

    def release(self) -> None:
        os.close(self._fd)


def _write_files(root: Path, files: Mapping[str, str | bytes]) -> None:
    for name, content in files.items():
        path = (root / name).resolve()
        if root.resolve() not in path.parents:
            raise ValueError(f"sandbox file {name!r} is outside the sandbox directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def _chown_tree(root: Path, uid: int) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chown(dirpath, uid, uid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), uid, uid)


def _count_own_processes() -> int:
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep_uid(uid: int) -> None:
    """Kill every process of ``uid`` (only safe because the uid is leased to this sandbox)."""
    subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            "import os,signal,sys\nos.setuid(int(sys.argv[1]))\ntry: os.kill(-1, signal.SIGKILL)\nexcept OSError: pass",
            str(uid),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=10,
        check=False,
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _classify(report: dict, stderr: str, limits: dict) -> tuple[str, str, int | None]:
    """(status, reason, returncode) for a program that ended on its own."""
    sig = report.get("signal")
    code = report.get("exit")
    returncode = -sig if sig is not None else code
    if code == 0:
        return "ok", "", 0
    cpu_s = report.get("cpu_s", 0.0)
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits["cpu_s"]):
        return "timeout", f"CPU time limit of {limits['cpu_s']} s exceeded", returncode
    if sig == signal.SIGXFSZ or "File too large" in stderr:
        return "file_limit", f"file size limit of {limits['max_file_mb']} MB exceeded", returncode
    if limits.get("max_disk_mb") and "No space left on device" in stderr:
        return "file_limit", f"disk limit of {limits['max_disk_mb']} MB exceeded: {_last_line(stderr)}", returncode
    if any(m in stderr for m in ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")):
        return (
            "memory",
            f"memory limit of {limits['memory_mb']} MB exceeded: {_last_line(stderr)}",
            returncode,
        )
    if "BlockingIOError" in stderr and "Resource temporarily unavailable" in stderr:
        return (
            "process_limit",
            f"process limit of {limits['max_procs']} reached: {_last_line(stderr)}",
            returncode,
        )
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return "killed", f"killed by {name}", returncode
    if code is None:
        return "error", "the sandbox launcher did not report an exit status", None
    return "failed", _last_line(stderr) or f"exit code {code}", returncode


def run_sandboxed(
    code: str | Mapping[str, str | bytes],
    *,
    language: str = "python",
    cmd: list[str] | None = None,
    stdin: str | bytes | None = None,
    timeout_s: float = 10.0,
    cpu_s: int | None = None,
    memory_mb: int = 1024,
    max_procs: int = 32,
    max_file_mb: int = 16,
    max_output_kb: int = 256,
    max_disk_mb: int = 512,
    network: bool = False,
    gpu: bool | None = None,
    ro_paths: Sequence[str] = (),
) -> SandboxResult:
    """Run untrusted code in a fresh temp dir under limits; never raises for anything the code does.

    ``code`` is a Python program (written to ``main.py``) or a ``{relative path: content}`` dict.
    ``cmd`` is the command to run in that directory (default for Python: the interpreter on
    ``main.py``; other languages must give one, e.g. ``["sh", "-c", "g++ a.cpp && ./a.out"]``);
    a leading ``"python"`` is replaced by an interpreter the sandbox can start.
    ``cpu_s`` defaults to ``ceil(timeout_s)``. ``stdout``/``stderr`` keep at most ``max_output_kb``
    together; ``truncated`` says when output was cut.

    With a private file system (root with mount namespaces: ``"filesystem: private"`` in ``isolation``)
    the program sees only a read-only view of the system (``/usr``, the loader's files, the Python
    installation, ``ro_paths``), a few device nodes (``gpu``: also ``/dev/nvidia*``; None: for every
    language but Python, so ParEval's CUDA programs run), its own ``/proc``,
    and one tmpfs of ``max_disk_mb`` MB holding its directory, ``/tmp`` and ``/dev/shm`` -- all of it gone
    when the run ends.
    """
    if language != "python" and cmd is None:
        raise ValueError(f"run_sandboxed: language {language!r} needs an explicit cmd")
    iso = _isolation()
    if iso.unshare_prefix is None:
        _warn_fallback_once()
    elif not iso.private_fs:
        _warn_host_fs_once()
    files = {"main.py": code} if isinstance(code, str) else dict(code)
    guard = not network and iso.unshare_prefix is None and language == "python"
    if cmd is None:
        cmd = ["python", "main.py"]
    argv = list(cmd)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = iso.python
        if guard:  # run the guard first, then the program as __main__
            argv[1:1] = [
                "-E",
                "-s",
                "-c",
                "exec(open('_mot_guard.py').read()); import runpy, sys; sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')",
            ]
        else:
            argv[1:1] = ["-E", "-s"]
    if argv and "/" not in argv[0]:
        # resolved here: after dropping to the sandbox uid the launcher may not read its own stdlib
        resolved = shutil.which(argv[0], path=_SAFE_PATH)
        if resolved is None:
            raise ValueError(f"run_sandboxed: command {argv[0]!r} not found on {_SAFE_PATH}")
        argv[0] = resolved
    cpu_limit = int(cpu_s if cpu_s is not None else max(1, int(timeout_s + 0.999)))
    limits = {"cpu_s": cpu_limit, "memory_mb": memory_mb, "max_procs": max_procs, "max_file_mb": max_file_mb,
              "max_disk_mb": max_disk_mb if iso.private_fs else None}
    isolation = iso.labels(network, language)
    # RLIMIT_NPROC counts every process of the uid: with a private uid that is this sandbox alone;
    # as non-root it is all of the caller's processes, so the allowance comes on top of those
    nproc_limit = max_procs if iso.drop_uid else _count_own_processes() + max_procs
    start = time.monotonic()

    lease = _UidLease() if iso.drop_uid else None
    workdir = Path(tempfile.mkdtemp(prefix="mot-sandbox-"))
    # the private root's mount point (empty on the host: the tmpfs lives in the namespace only)
    root = Path(tempfile.mkdtemp(prefix="mot-sandbox-root-")) if iso.private_fs else None
    stdin_file = tempfile.TemporaryFile()
    status_r, status_w = os.pipe()
    proc: subprocess.Popen | None = None
    try:
        _write_files(workdir, files)
        if guard:
            (workdir / "_mot_guard.py").write_text(_SOCKET_GUARD)
        if lease is not None:
            _chown_tree(workdir, lease.uid)
        if stdin is not None:
            stdin_file.write(stdin.encode() if isinstance(stdin, str) else stdin)
            stdin_file.seek(0)
        env = {
            "PATH": _SAFE_PATH,
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        spec = {
            "status_fd": status_w,
            "limits": [
                ("RLIMIT_CPU", cpu_limit, cpu_limit + 1),
                ("RLIMIT_AS", memory_mb << 20, memory_mb << 20),
                ("RLIMIT_NPROC", nproc_limit, nproc_limit),
                ("RLIMIT_FSIZE", max_file_mb << 20, max_file_mb << 20),
                ("RLIMIT_CORE", 0, 0),
                ("RLIMIT_NOFILE", 256, 256),
            ],
            "uid": lease.uid if lease else None,
            "sweep_uid": lease.uid if lease and iso.unshare_prefix is None else None,
            "cwd": str(workdir),
            "argv": argv,
            "env": env,
            "fs": (_fs_spec(iso, root, max_disk_mb, gpu=language != "python" if gpu is None else gpu,
                            ro_paths=ro_paths) if root is not None else None),
        }
        if network or iso.unshare_prefix is None:
            prefix: list[str] = []
        else:
            prefix = list(iso.unshare_prefix)
        if network and iso.unshare_prefix is not None:
            # keep the PID namespace, share the network
            prefix = [a for a in iso.unshare_prefix if a != "--net"]
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(spec)]
        try:
            proc = subprocess.Popen(
                prefix + launcher,
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env,
                start_new_session=True,
                pass_fds=(status_w,),
            )
        except OSError as exc:
            return SandboxResult(
                "error",
                None,
                "",
                "",
                f"could not start the sandbox: {exc}",
                time.monotonic() - start,
                isolation,
            )
        os.close(status_w)
        status_w = -1
        out, err, over_limit, timed_out = _collect(proc, start + timeout_s, max_output_kb << 10)
        wall = time.monotonic() - start
        report_raw = _read_all(status_r)
        stdout = out.decode("utf-8", errors="replace")
        stderr = err.decode("utf-8", errors="replace")
        if over_limit:
            return SandboxResult(
                "output_limit",
                None,
                stdout,
                stderr,
                f"output exceeded {max_output_kb} KB",
                wall,
                isolation,
                truncated=True,
            )
        if timed_out:
            return SandboxResult(
                "timeout", None, stdout, stderr, f"wall time limit of {timeout_s} s exceeded", wall, isolation
            )
        try:
            report = json.loads(report_raw) if report_raw else {}
        except json.JSONDecodeError:
            report = {}
        if not report:
            rc = proc.returncode
            reason = f"the sandbox ended without a status (exit {rc}): {_last_line(stderr)}"
            return SandboxResult(
                "killed" if rc and rc < 0 else "error", rc, stdout, stderr, reason, wall, isolation
            )
        status, reason, returncode = _classify(report, stderr, limits)
        return SandboxResult(status, returncode, stdout, stderr, reason, wall, isolation)
    finally:
        if proc is not None:
            _kill_group(proc.pid)
            proc.wait()
        if lease is not None:
            if iso.unshare_prefix is None:
                _sweep_uid(lease.uid)
            lease.release()
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        stdin_file.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


@functools.cache
def _warn_fallback_once() -> None:
    import logging

    logging.getLogger(__name__).warning(
        "sandbox: unshare is not usable here, so model-written code runs with rlimits, a private uid (root "
        "only) and a Python socket guard: NOT a security boundary (host files, /proc and /tmp are visible)")


@functools.cache
def _warn_host_fs_once() -> None:
    import logging

    logging.getLogger(__name__).warning(
        "sandbox: no private file system here (it needs root and mount namespaces), so model-written code "
        "sees the host's world-readable files, /tmp and /dev/shm, and max_disk_mb is not enforced; network, "
        "PID namespace and rlimits still apply")


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _collect(proc: subprocess.Popen, deadline: float, max_bytes: int) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout/stderr until EOF or the deadline, keeping at most ``max_bytes`` in total.

    Returns (stdout, stderr, output_limit_hit, wall_time_hit); kills the process group on either.
    """
    buffers = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    total = 0
    sel = selectors.DefaultSelector()
    for stream in buffers:
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ)
    over = timed_out = False
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(remaining, 0.5)):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                keep = max(0, min(len(chunk), max_bytes - total))
                buffers[key.fileobj] += chunk[:keep]
                total += len(chunk)
                if total > max_bytes:
                    over = True
                    break
            if over:
                break
        if not (over or timed_out):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        sel.close()
        if over or timed_out:
            _kill_group(proc.pid)
        proc.stdout.close()
        proc.stderr.close()
    return bytes(buffers[proc.stdout]), bytes(buffers[proc.stderr]), over, timed_out


def check_python_program(program: str, timeout_s: float = 10.0, **limits) -> SandboxResult:
    """Run a self-checking Python program (HumanEval/MBPP style: solution + tests + ``check(f)``).

    ``passed`` is True when it exits 0; ``status``/``reason`` say why not otherwise.
    """
    return run_sandboxed(program, language="python", timeout_s=timeout_s, **limits)
