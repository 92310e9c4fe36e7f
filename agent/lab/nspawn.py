"""Lab machines with a real systemd: Debian bookworm containers under ``systemd-nspawn``.

Root only. A ``debootstrap`` rootfs, booted with
``systemd-nspawn -b --register=no --keep-unit`` (this machine has no host systemd or machined)
and driven with ``nsenter -t <container PID 1> -a``. Three layers, each an overlayfs lower of the
next, so nothing below is ever written:

* the **base rootfs** (:func:`ensure_rootfs`): debootstrap of :data:`ROOTFS_PACKAGES`, kept under
  ``.cache/systemd/rootfs-<key>`` (the key hashes the package list), built once per cache;
* the **image** (:func:`bake_image`): the base after the stack's own user data ran in it
  (``deploy/bootstrap/nat-ha-bootstrap.sh`` as the templates embed it), installing nat-ha into the
  venv ``/opt/nat-ha`` from the bundle ``deploy/release.py`` built (by file URL and sha256, pip's
  hash-checking mode) and the shipped units from it - an AMI after first boot;
* one **instance** per container (:class:`Container`): its own upper layer, so its config,
  journal and state survive a poweroff and boot, as an instance's disk does.

Every container is joined to a network namespace the lab made (``--network-namespace-path``),
runs in a cgroup of its own (``nat-ha-ct-<pid>-<name>``; nspawn without a host systemd would
otherwise put every container in ``/payload``) and is removed with it: killed if still running,
unmounted, its cgroups deleted. Leftovers of a dead owner pid go at the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.lab import awsrecorder, userdata

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
#: The Debian packages of the base rootfs. python3 (3.11), python3-venv and nftables stand for the
#: bootstrap's `dnf install python3.11 nftables`, which the lab skips (no dnf, no network).
ROOTFS_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "iproute2", "nftables")
CGROUP_ROOTS = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
MARK = "nat-ha-ct-"
CONTAINER_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
RELEASE_IN_CONTAINER = "/run/nat-ha-release"  # the release bundle's directory, read-only in every container
SIGNAL_PORT = 8793  # the lab's CloudFormation (agent.lab.awsrecorder) on 127.0.0.1 of a NAT's namespace


def skip_reason() -> str | None:
    """Why containers with systemd cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "systemd containers need root (systemd-nspawn, overlayfs, network namespaces)"
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install --no-install-recommends systemd-container)"
    try:
        has_overlay = "overlay" in Path("/proc/filesystems").read_text()
    except OSError:
        has_overlay = False
    if not has_overlay:
        return "the kernel has no overlayfs (the containers' disks are overlay layers)"
    if not ready_rootfs() and shutil.which("debootstrap") is None:
        return "no cached rootfs and no `debootstrap` (apt-get install --no-install-recommends debootstrap)"
    if not Path(CGROUP_ROOTS[0]).is_dir() and not Path("/sys/fs/cgroup/cgroup.procs").exists():
        return "no cgroup file system at /sys/fs/cgroup"
    return None


def cache_root() -> Path:
    return Path(os.environ.get("NAT_HA_SYSTEMD_CACHE", str(REPO / ".cache" / "systemd")))


def rootfs_key() -> str:
    return hashlib.sha256(" ".join((SUITE, "minbase", *ROOTFS_PACKAGES)).encode()).hexdigest()[:12]


def rootfs_path() -> Path:
    return cache_root() / f"rootfs-{rootfs_key()}"


def ready_rootfs() -> Path | None:
    path = rootfs_path()
    return path if (path / ".nat-ha-complete").exists() else None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_rootfs(log: Callable[[str], None] = print) -> Path:
    """The base rootfs, built with debootstrap the first time (about a minute, 215 MB)."""
    path = rootfs_path()
    with file_lock(cache_root() / ".rootfs.lock"):
        if (path / ".nat-ha-complete").exists():
            return path
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"building the container rootfs with debootstrap into {path} (once per cache)")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}", SUITE, str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise RuntimeError(f"debootstrap failed: {' / '.join(tail)}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):  # 100 MB nobody reads
            for p in (tmp / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        (tmp / "etc" / "hostname").write_text("nat-ha-lab\n")
        (tmp / ".nat-ha-complete").write_text(" ".join(ROOTFS_PACKAGES) + "\n")
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    return path


@dataclass(frozen=True)
class Bundle:
    """The install bundle deploy/release.py built from this checkout, as a stack's user data takes it."""

    path: Path
    sha256: str

    @property
    def url(self) -> str:
        """Its URL inside a container (a file URL of the read-only bind: the containers have no network)."""
        return f"file://{RELEASE_IN_CONTAINER}/{self.path.name}"


def build_bundle(dest: Path) -> Bundle:
    """Run the release command as a user would (``deploy/release.py``, a test build of this checkout)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("nat-ha-*-bundle.tar.gz*"):  # always this checkout's code
        old.unlink()
    cmd = [sys.executable, str(REPO / "deploy" / "release.py"), "--allow-dirty", "--out", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    m = re.search(r"^sha256 ([0-9a-f]{64})$", proc.stdout, re.M)
    bundles = list(dest.glob("nat-ha-*-bundle.tar.gz"))
    if proc.returncode != 0 or m is None or len(bundles) != 1:
        raise RuntimeError(f"deploy/release.py failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return Bundle(bundles[0], m.group(1))


def build_wheels(dest: Path, version: str = "", deps: bool = True) -> Path:
    """nat-ha (and with ``deps`` its dependencies) as wheels in ``dest``: an upgrade to install by hand.

    ``version``: build this checkout's code as another version; ``deps``: False builds nat-ha's wheel only.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("nat_ha-*.whl"):  # always this checkout's code
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="nat-ha-src-") as tmp:
        # From a clean copy: setuptools' build/ in the checkout would keep files deleted since.
        src = Path(tmp) / "src"
        junk = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "node_modules", "tests", "bench")
        shutil.copytree(REPO, src, ignore=junk)
        if version:
            _set_version(src, version)
        no_deps = [] if deps else ["--no-deps"]
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", *no_deps, "--wheel-dir", str(dest), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or not list(dest.glob("nat_ha-*.whl")):
        raise RuntimeError(f"pip wheel failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return dest


def _set_version(src: Path, version: str) -> None:
    """Make the source tree at ``src`` another version of nat-ha (``__version__``, which pyproject reads)."""
    from agent import __version__

    path = src / "agent" / "__init__.py"
    old, new = f'__version__ = "{__version__}"', f'__version__ = "{version}"'
    text = path.read_text()
    if old not in text:
        raise RuntimeError(f"cannot set the version in agent/__init__.py: {old!r} not found")
    path.write_text(text.replace(old, new, 1))


# ------------------------------------------------------------- leftovers
def pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process (one we may not signal counts as live)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmdir_tree(path: Path) -> None:
    """Remove an (empty of processes) cgroup directory tree, deepest first."""
    if not path.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda x: -x[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def cleanup_stale() -> list[str]:
    """Unmount container disks and delete cgroups whose owner process is gone."""
    removed: list[str] = []
    pattern = re.compile(rf"{MARK}(\d+)-")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            mnt = line.split()[1] if len(line.split()) > 1 else ""
            m = pattern.search(mnt)
            if m and not pid_alive(int(m.group(1))):
                subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=10, check=False)
                removed.append(mnt)
    for root in CGROUP_ROOTS:
        base = Path(root)
        if not base.is_dir():
            continue
        for d in base.glob(f"{MARK}*"):
            m = pattern.match(d.name)
            if m and not pid_alive(int(m.group(1))):
                for pid in _cgroup_pids(d):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                _rmdir_tree(d)
                removed.append(str(d))
    return removed


def _cgroup_pids(path: Path) -> list[int]:
    pids: list[int] = []
    for procs in path.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(x) for x in procs.read_text().split()]
    return pids


# ------------------------------------------------------------- containers
@dataclass
class Container:
    """One booted (or bootable) machine: its own overlay disk, joined to a network namespace."""

    name: str
    lowers: list[Path]  # topmost first
    workdir: Path
    netns: str = ""  # a name under /run/netns; empty: --private-network
    binds_ro: list[tuple[Path, str]] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    leader: int = 0
    boots: int = 0
    _mounted: bool = False

    def __post_init__(self) -> None:
        self.tag = f"{MARK}{os.getpid()}-{self.name}"
        self.base = self.workdir / self.tag
        self.upper = self.base / "upper"
        self.root = self.base / "root"
        self.log_path = self.base.with_name(self.tag + ".nspawn.log")

    # ---------------------------------------------------------------- disk
    def mount(self) -> None:
        if self._mounted:
            return
        for d in (self.upper, self.base / "work", self.root):
            d.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={':'.join(str(p) for p in self.lowers)},upperdir={self.upper},workdir={self.base / 'work'}"
        proc = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"mount overlay for {self.name}: {proc.stderr.strip()}")
        self._mounted = True

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file on the container's disk (running or not)."""
        self.mount()
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    # --------------------------------------------------------------- power
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _cgroups(self) -> list[Path]:
        return [Path(r) / self.tag for r in CGROUP_ROOTS if Path(r).is_dir()]

    def boot(self, timeout: float = 60.0) -> float:
        """Start systemd as PID 1 in the container; returns when it answers (seconds taken).

        It answers once its bus is up; units may still be starting (`wait_active`).
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.mount()
        self.cleanup_cgroups()
        enter = []
        for cg in self._cgroups():
            cg.mkdir(exist_ok=True)
            enter.append(f"echo $$ > {cg}/cgroup.procs")
        # A joined namespace is the container's own network, as with --private-network: nspawn then keeps
        # CAP_NET_ADMIN and a writable /proc/sys/net only when asked (the NAT set-up needs both).
        net = ["--private-network"]
        if self.netns:
            net = [f"--network-namespace-path=/run/netns/{self.netns}", "--capability=CAP_NET_ADMIN"]
        binds = [f"--bind-ro={src}:{dst}" for src, dst in self.binds_ro]
        nspawn = [
            "systemd-nspawn", "-b", "-D", str(self.root), "-M", self.name[:64], *net, *binds,
            "--register=no", "--keep-unit", "--console=pipe",
        ]  # fmt: skip
        script = "; ".join([*enter, 'exec "$@"'])
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["sh", "-c", script, "sh", *nspawn],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"},
            )  # fmt: skip
        self.boots += 1
        deadline = t0 + timeout
        self.leader = 0
        while time.monotonic() < deadline and self.running:
            found = subprocess.run(
                ["pgrep", "-P", str(self.proc.pid), "-x", "systemd"], capture_output=True, text=True, check=False
            ).stdout.split()
            if found:
                self.leader = int(found[0])
                break
            time.sleep(0.05)
        while self.leader and time.monotonic() < deadline and self.running:
            state = self.run("systemctl", "is-system-running", check=False, timeout=10).stdout.strip()
            if state in ("starting", "running", "degraded"):
                return time.monotonic() - t0
            time.sleep(0.05)
        log_tail = self.log_path.read_text(errors="replace")[-500:] if self.log_path.exists() else ""
        self.kill()
        raise RuntimeError(f"container {self.name} did not boot within {timeout:.0f} s: {log_tail.strip()}")

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the running container (its namespaces, a clean environment)."""
        if not self.leader:
            raise RuntimeError(f"{self.name} is not running")
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *CONTAINER_ENV, *argv],
            capture_output=True, text=True, timeout=timeout, check=False, input=input,
        )  # fmt: skip
        if check and proc.returncode != 0:
            why = (proc.stderr or proc.stdout).strip()
            raise RuntimeError(f"{self.name}: {' '.join(argv)}: rc {proc.returncode}: {why}")
        return proc

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60.0) -> str:
        return self.run("systemctl", *args, check=check, timeout=timeout).stdout.strip()

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props), check=False).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def is_active(self, unit: str) -> str:
        return self.run("systemctl", "is-active", unit, check=False).stdout.strip()

    def wait_active(self, unit: str, timeout: float, want: str = "active") -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running and self.is_active(unit) == want:
                return True
            time.sleep(0.1)
        return False

    def journal(self, unit: str = "", output: str = "short-precise", boot: str = "-b") -> str:
        args = ["journalctl", "--no-pager", "-o", output, *([boot] if boot else [])]
        if unit:
            args += ["-u", unit]
        return self.run(*args, check=False).stdout

    def journal_entries(self, unit: str = "", boot: str = "-b") -> list[dict[str, str]]:
        """Journal entries (JSON) of ``unit``: ``MESSAGE``, ``__REALTIME_TIMESTAMP`` (µs), ``_PID`` ..."""
        out = []
        for line in self.journal(unit, output="json", boot=boot).splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry.get("MESSAGE"), str):
                    out.append(entry)
        return out

    def main_pid(self, unit: str) -> int:
        """The unit's main process, as a pid inside the container (0: none)."""
        return int(self.show(unit, "MainPID").get("MainPID", "0") or 0)

    def poweroff(self, timeout: float = 90.0) -> float:
        """A clean shutdown (services stopped in order); returns seconds taken."""
        if not self.running:
            return 0.0
        t0 = time.monotonic()
        self.run("systemctl", "poweroff", "--no-block", check=False)
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.name} did not power off within {timeout:.0f} s") from None
        self.leader = 0
        self.cleanup_cgroups()
        return time.monotonic() - t0

    def kill(self) -> None:
        """Pull the plug: SIGKILL the container's PID 1 (and nspawn if it stays)."""
        if self.proc is None:
            return
        if self.leader:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.leader = 0
        self.cleanup_cgroups()

    def cleanup_cgroups(self) -> None:
        for cg in self._cgroups():
            if cg.is_dir() and not self.running:
                for pid in _cgroup_pids(cg):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                _rmdir_tree(cg)

    def close(self) -> None:
        """Off, unmounted, cgroups gone (the upper layer stays in the workdir)."""
        if self.running:
            self.kill()
        self.cleanup_cgroups()
        if self._mounted:
            subprocess.run(["umount", str(self.root)], capture_output=True, timeout=30, check=False)
            if os.path.ismount(self.root):
                subprocess.run(["umount", "-l", str(self.root)], capture_output=True, timeout=30, check=False)
            self._mounted = False


# ------------------------------------------------------------------ image
@dataclass
class Image:
    """The base rootfs plus the layer the bootstrap left (an AMI after first boot)."""

    base: Path
    layer: Path
    bundle: Bundle
    bootstrap_log: str
    bootstrap_rc: int
    signals: list[dict[str, str]] = field(default_factory=list)  # what the bootstrap told CloudFormation

    @property
    def lowers(self) -> list[Path]:
        return [self.layer, self.base]

    def save(self, path: Path, group: str, table: str) -> None:
        """Write the image's record (its layer stays where the bake left it), for :func:`prebaked_image`."""
        record = {
            "base": str(self.base), "layer": str(self.layer), "bundle": str(self.bundle.path),
            "sha256": self.bundle.sha256, "bootstrap_log": self.bootstrap_log, "bootstrap_rc": self.bootstrap_rc,
            "signals": self.signals, "group": group, "table": table,
        }  # fmt: skip
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)


PREBAKED_ENV = "NAT_HA_PREBAKED_IMAGE"  # an image's record baked earlier in the same run (tests/run-all.sh)


def prebaked_image(group: str, table: str, log: Callable[[str], None] = print) -> Image | None:
    """The image ``agent.lab.netlab prebake`` baked earlier in this test run, if one was asked for.

    tests/run-all.sh bakes it while the earlier tiers run (the same :func:`bake_image`, the same user data,
    this checkout's bundle) and names its record in ``NAT_HA_PREBAKED_IMAGE``; the systemd lab then
    takes it instead of baking again. Waits for a bake still running (it holds the record's lock);
    None (bake here) without the variable, or when that bake failed, was for another group or table,
    or its bundle was rebuilt since (the user data checks the bundle's sha256).
    """
    where = os.environ.get(PREBAKED_ENV)
    if not where:
        return None
    path = Path(where)
    with file_lock(path.with_name(path.name + ".lock")):
        if not path.exists():
            log(f"no image baked ahead at {path} (its bake failed: see its log): baking here")
            return None
        r = json.loads(path.read_text())
    image = Image(Path(r["base"]), Path(r["layer"]), Bundle(Path(r["bundle"]), r["sha256"]), r["bootstrap_log"],
                  int(r["bootstrap_rc"]), list(r["signals"]))  # fmt: skip
    bundle = image.bundle.path
    if (r["group"], r["table"]) != (group, table) or not image.layer.is_dir() or not bundle.exists():
        log(f"the image baked ahead at {path} is for another lab or is gone: baking here")
        return None
    if hashlib.sha256(bundle.read_bytes()).hexdigest() != image.bundle.sha256:  # rebuilt since by another bake
        log(f"the bundle the image at {path} was baked from has changed since: baking here")
        return None
    return image


def run_user_data(ct: Container, script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The stack's user data, run as root in a transient unit of ``ct`` as cloud-init runs it.

    Two differences from EC2 (each said where it matters): the package step is skipped
    (NAT_HA_SKIP_PACKAGES=1: the image has Debian's python3.11 and nftables, and no dnf), and
    CloudFormation is the lab recorder on 127.0.0.1:SIGNAL_PORT of the container's namespace
    (AWS_ENDPOINT_URL_CLOUDFORMATION; credentials and identity come from the lab IMDS, as on EC2).
    """
    ct.write("/var/lib/cloud/instance/user-data.txt", script, 0o700)
    return ct.run(
        "systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--unit=cloud-final-user-data",
        "--setenv=NAT_HA_SKIP_PACKAGES=1", f"--setenv=AWS_ENDPOINT_URL_CLOUDFORMATION=http://127.0.0.1:{SIGNAL_PORT}",
        "/bin/bash", "/var/lib/cloud/instance/user-data.txt",
        check=False, timeout=timeout,
    )  # fmt: skip


@contextlib.contextmanager
def lab_aws(netns: str, instance_id: str, workdir: Path) -> Iterator[Path]:
    """The lab IMDSv2 (an instance in the stack's first NAT subnet) and the CloudFormation recorder in
    ``netns``, for one bootstrap run; yields the recorder's file."""
    out = workdir / f"signals-{netns}.jsonl"
    out.unlink(missing_ok=True)
    subprocess.run(["ip", "-n", netns, "addr", "replace", "169.254.169.254/32", "dev", "lo"], check=True, timeout=10)
    commands = [["agent.lab.awsrecorder", "--port", str(SIGNAL_PORT), "--out", str(out)]]
    if instance_id:
        commands.append(["agent.lab.imds", "--instance-id", instance_id, "--region", "us-east-1", "--az", "us-east-1a",
                         "--subnet-id", "subnet-lab1"])  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for argv in commands:
            exe = ["ip", "netns", "exec", netns, sys.executable, "-m", *argv]
            procs.append(subprocess.Popen(exe, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO))
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"a lab AWS stand-in did not start in {netns}")
        yield out
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def bake_image(workdir: Path, netns: str, group: str = "lab", region: str = "us-east-1", table: str = "nat-ha",
               log: Callable[[str], None] = print) -> tuple[Image, Container]:  # fmt: skip
    """Run the stack's user data in a fresh container joined to ``netns``; return the image and the container.

    The caller powers the container off (or inspects it first: tests/systemd/test_bootstrap.py).
    ``netns`` needs an IPv4 default route (setup-nat masquerades on its interface), as an EC2
    instance has. The bundle is this checkout's, built by deploy/release.py and installed by URL and
    sha256 as on EC2. The last steps cannot succeed here - the bake namespace has a lab IMDS but no
    EC2 or DynamoDB - so the agent does not start and the bootstrap signals FAILURE, which the
    lab's CloudFormation records (:attr:`Image.signals`): the failure path, run for real.
    """
    base = ensure_rootfs(log)
    bundle = build_bundle(cache_root() / "release")
    ct = Container("bake", [base], workdir, netns=netns, binds_ro=[(bundle.path.parent, RELEASE_IN_CONTAINER)])
    # The lab's containers have no DNS (their AWS endpoints are addresses): a name lookup fails at once
    # on loopback instead of after the resolver's timeouts (the bake's agent looks up EC2's name).
    ct.write("/etc/resolv.conf", "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
    script = userdata.render(group=group, region=region, table=table, artifact=bundle.url, sha256=bundle.sha256)
    try:
        with lab_aws(netns, "i-0bake0000000000001", workdir) as signals:
            ct.boot()
            proc = run_user_data(ct, script)
            image = Image(base, ct.upper, bundle, proc.stdout + proc.stderr, proc.returncode, awsrecorder.read(signals))
    except BaseException:
        ct.close()
        raise
    return image, ct


def temp_workdir(prefix: str = "nat-ha-nspawn-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
