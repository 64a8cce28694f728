#!/usr/bin/env python3
"""Runs Zuul's own unit tests against nodepool-operator + nodepool-zk-bridge.

Zuul 14.3.0's tests (from its PyPI sdist, unmodified) talk to a `FakeNodepool`
(tests/base.py) that fulfills every node request itself. This runner replaces
that class, where the test modules look it up, with `OperatorNodepool`: for
each test's ZooKeeper chroot it starts the real `nodepool-zk-bridge` and
`nodepool-operator` binaries in a fresh Kubernetes namespace, applies a static
Provider on a real sshd, waits until the nodes are ready in ZooKeeper, and
implements `pause()`/`unpause()` as SIGSTOP/SIGCONT of both processes.

Actions (see e2e/zuul/README.md):

  install   venv with zuul==14.3.0 + Zuul's test-requirements.txt, and the
            unpacked sdist (tests/) under ~/.cache/nodepool-operator
  run       run the selected tests (default tests.unit.test_nodepool.TestNodepool)
  check     list which FakeNodepool features each selected test uses (static scan)

`run` prints one line per test and, last, `N passed, N failed`.
Exit code: 0 all selected tests passed, 1 some failed or were not runnable,
2 usage/setup error.
"""

import argparse
import ctypes
import hashlib
import itertools
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
import traceback

ZUUL_VERSION = "14.3.0"
CACHE = pathlib.Path(os.environ.get("NODEPOOL_CACHE") or pathlib.Path.home() / ".cache/nodepool-operator")
DEFAULT_VENV = pathlib.Path(os.environ.get("ZUUL_TESTS_VENV") or CACHE / "venv-zuul-tests")
SDIST_DIR = CACHE / "zuul-sdist"
SOURCE = SDIST_DIR / f"zuul-{ZUUL_VERSION}"
DEFAULT_TESTS = ["tests.unit.test_nodepool.TestNodepool"]
STAMP = ".nodepool-zuul-unit-tests"


def fail(message):
    """A setup or usage error: exit code 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def log(message):
    """Progress for humans: stderr, never the logging module (Zuul's
    BaseTestCase insists that the root logger has no handlers)."""
    print(f"[zuul-unit-tests {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------

def fetch_source(pip):
    """Zuul's sdist (the wheel has no tests/) from PyPI, unpacked under the cache."""
    if (SOURCE / "tests/unit/test_nodepool.py").is_file():
        return False
    SDIST_DIR.mkdir(parents=True, exist_ok=True)
    log(f"pip download zuul=={ZUUL_VERSION} (sdist) into {SDIST_DIR}")
    subprocess.run([str(pip), "download", "-q", "--no-deps", "--no-binary", ":all:",
                    f"zuul=={ZUUL_VERSION}", "-d", str(SDIST_DIR)], check=True)
    archive = SDIST_DIR / f"zuul-{ZUUL_VERSION}.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(SDIST_DIR, filter="data")
    return True


def venv_ok(venv):
    stamp = venv / STAMP
    requirements = SOURCE / "test-requirements.txt"
    if not stamp.is_file() or not requirements.is_file():
        return False
    return stamp.read_text() == install_key(requirements)


def install_key(requirements):
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    return f"zuul=={ZUUL_VERSION} test-requirements {digest}\n"


def install(venv, ansible=False):
    """Idempotent. Returns a dict for the JSON report."""
    python = venv / "bin/python"
    installed = False
    if not python.exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    fetched = fetch_source(venv / "bin/pip")
    if not venv_ok(venv):
        requirements = SOURCE / "test-requirements.txt"
        log(f"pip install zuul=={ZUUL_VERSION} -r {requirements} into {venv}")
        subprocess.run([str(venv / "bin/pip"), "install", "-q", f"zuul=={ZUUL_VERSION}",
                        "-r", str(requirements)], check=True)
        # The check imports Zuul's test base exactly as `run` does.
        probe = ("import sys, zuul; sys.path.insert(0, sys.argv[1]); import tests.base, testtools, fixtures; "
                 "import importlib.metadata as m; assert m.version('zuul') == sys.argv[2], m.version('zuul')")
        subprocess.run([str(python), "-c", probe, str(SOURCE), ZUUL_VERSION], check=True)
        (venv / STAMP).write_text(install_key(requirements))
        installed = True
    report = {"venv": str(venv), "zuul": ZUUL_VERSION, "source": str(SOURCE),
              "installed": installed, "fetched_source": fetched}
    if ansible:
        report["ansible"] = install_ansible(venv)
    return report


def install_ansible(venv):
    """What Zuul's noxfile runs before its unit tests: `zuul-manage-ansible`, which installs
    every supported Ansible into <venv>/lib/zuul/ansible (about 1.6 GB). The executor of
    Zuul's ZuulTestCase needs it even though the tests fake the playbook runs."""
    manage = venv / "bin/zuul-manage-ansible"
    if subprocess.run([str(manage), "--validate"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).returncode == 0:
        return "present"
    log(f"zuul-manage-ansible -v (every Ansible version Zuul supports, into {venv}/lib/zuul/ansible)")
    subprocess.run([str(manage), "-v"], check=True, stdout=subprocess.DEVNULL)
    return "installed"


# ---------------------------------------------------------------------------
# check: which FakeNodepool features a test uses
# ---------------------------------------------------------------------------

# What OperatorNodepool cannot do (see the class); everything else it does truthfully.
CONDITIONAL = {"attributes", "resources", "python_path", "shell_type", "connection_port", "host_keys"}
UNSUPPORTED = {"addFailRequest", "fulfillRequest", "removeNode", "registerLauncher", "history",
               "makeNode", "fail_requests", "complete_event"}


def check(test_files):
    """Static scan: FakeNodepool members each test method touches."""
    pattern = re.compile(r"fake_nodepool\.([A-Za-z_]+)")
    report = []
    for path in test_files:
        cls, name, uses = None, None, {}
        for line in pathlib.Path(path).read_text().splitlines():
            m = re.match(r"class (\w+)\(", line)
            if m:
                cls = m.group(1)
            m = re.match(r"    def (\w+)\(", line)
            if m:
                # A class's setUp counts too (e.g. a zone set for every test of the class).
                name = f"{cls}.{m.group(1)}" if m.group(1).startswith("test_") or m.group(1) == "setUp" else None
                if name:
                    uses[name] = set()
            if name:
                uses[name].update(pattern.findall(line))
        for test, members in uses.items():
            if not members:
                continue
            verdict = ("unsupported" if members & UNSUPPORTED else
                       "conditional" if members & CONDITIONAL else "supported")
            report.append({"file": str(path), "test": test, "uses": sorted(members), "verdict": verdict})
    return report


# ---------------------------------------------------------------------------
# run (inside the venv)
# ---------------------------------------------------------------------------

class Config:
    """What every OperatorNodepool of this run needs (set by `run`)."""
    operator = bridge = kubectl = kubeconfig = None
    zk_hosts = zk_ca = zk_cert = zk_key = None
    sshd_port = None
    labels = ["ubuntu-xenial"]
    slots = 4
    namespace_prefix = "zuul-unit"
    logs = pathlib.Path("/tmp/zuul-unit-tests")
    session_timeout = None
    ready_timeout = 120.0
    rust_log = "info"
    current_test = "unknown"


CONFIG = Config()
LIVE = []  # every OperatorNodepool not stopped yet (safety net between tests)


def free_loopback_address():
    """A loopback address free right now, from 20000-31999 like e2e/src/process.rs: below the
    kernel's ephemeral range, so no outgoing connection takes it before the child binds it."""
    import random
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"127.0.0.1:{port}"
    raise RuntimeError("no free loopback port in 20000-31999")


_PRCTL = ctypes.CDLL(None).prctl  # looked up before any fork: the child only calls it


def die_with_parent():
    """preexec_fn: SIGKILL the child when the runner dies (e.g. killed on a test timeout), so no
    bridge, operator or MariaDB outlives it."""
    _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def proc_state(pid):
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(") ", 1)[1].split()[0]


# FakeNodepool shapes a node by its label's name (winrm for "windows", network_cli for
# "network", a Kubernetes namespace or pod, user "fakeuser"); a static host cannot, so these
# are not served and a test asking for them gets a failed request.
FAKE_SHAPED_LABELS = ("fakeuser", "windows", "network", "kubernetes-namespace", "fedora-pod", "remote-pod")


def fixture_labels():
    """Every label Zuul's test fixtures name (FakeNodepool serves any label; a real launcher
    only what it is configured with), minus the ones the fake shapes specially."""
    found = set()
    for path in (SOURCE / "tests/fixtures").rglob("*.yaml"):
        for match in re.finditer(r"\blabel:[ \t]*['\"]?([A-Za-z0-9_][A-Za-z0-9_.-]*)", path.read_text(errors="replace")):
            found.add(match.group(1))
    return sorted(label for label in found if not any(word in label for word in FAKE_SHAPED_LABELS))


class PrivateMariaDB:
    """A throw-away MariaDB on 127.0.0.1 for Zuul's ZuulTestCase (its [database] is MySQL):
    what Zuul's tools/test-setup.sh prepares, in a private data directory, on a free port."""

    def __init__(self, directory):
        self.dir = pathlib.Path(directory)
        self.data = self.dir / "data"
        # A unix socket path must stay under 108 bytes; the logs directory may be deeper.
        import tempfile
        self.socket_dir = pathlib.Path(tempfile.mkdtemp(prefix="zuul-mariadb-"))
        self.socket = self.socket_dir / "mysqld.sock"
        self.port = int(free_loopback_address().rsplit(":", 1)[1])
        self.proc = None

    def start(self):
        import shutil
        for tool in ("mariadb-install-db", "mariadbd"):
            if not (shutil.which(tool) or pathlib.Path("/usr/sbin", tool).exists()):
                fail(f"{tool} is missing: apt-get install mariadb-server (the service need not run)")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.data.mkdir(parents=True)
        user = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--skip-test-db",
                        *user], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.proc = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={self.data}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={self.dir / 'mysqld.pid'}",
             f"--log-error={self.dir / 'mysqld.err'}", "--innodb-buffer-pool-size=64M", *user],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent)
        import pymysql
        deadline = time.monotonic() + 60
        while True:
            try:
                db = pymysql.connect(unix_socket=str(self.socket), user="root")
                break
            except pymysql.err.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    fail(f"mariadbd did not start; see {self.dir / 'mysqld.err'}")
                time.sleep(0.2)
        with db.cursor() as cur:
            cur.execute("CREATE USER 'openstack_citest'@'%' IDENTIFIED BY 'openstack_citest'")
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'openstack_citest'@'%' WITH GRANT OPTION")
            cur.execute("CREATE DATABASE openstack_citest CHARACTER SET utf8")
        db.close()
        os.environ["ZUUL_MYSQL_HOST"] = "127.0.0.1"
        os.environ["ZUUL_MYSQL_PORT"] = str(self.port)
        log(f"private MariaDB on 127.0.0.1:{self.port} (pid {self.proc.pid}, {self.dir})")

    def stop(self):
        import shutil
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def make_operator_nodepool(original, unittest):
    """The stand-in class. Built after `tests.base` is importable, so it can
    reuse FakeNodepool's read-only ZooKeeper inspection methods as they are."""

    import kazoo.client
    import kazoo.exceptions

    class NotRunnable(unittest.SkipTest):
        def __init__(self, what):
            super().__init__(f"not runnable against a real launcher: {what}")

    class OperatorNodepool:
        """FakeNodepool's interface, served by nodepool-operator + nodepool-zk-bridge.

        Truthful: pause()/unpause()/paused (SIGSTOP/SIGCONT both processes;
        setting `paused` does the same), stop(), getNodeRequests()/getNodes()
        (FakeNodepool's own read-only ZooKeeper queries, on the same chroot).
        Node settings (`attributes`, `python_path`, ...) read what the real
        nodes carry; setting one to something else raises NotRunnable, as do
        the fake's launcher-side levers (addFailRequest, fulfillRequest,
        removeNode, registerLauncher, history).
        """

        REQUEST_ROOT = original.REQUEST_ROOT
        NODE_ROOT = original.NODE_ROOT
        COMPONENT_ROOT = original.COMPONENT_ROOT
        _index = itertools.count(1)
        _settings_names = ("attributes", "resources", "python_path", "shell_type",
                           "connection_port", "host_keys", "remote_ansible")

        # FakeNodepool's read-only queries, unchanged (they only use self.client).
        getNodeRequests = original.getNodeRequests
        getNodes = original.getNodes

        def __init__(self, zk_chroot_fixture):
            object.__setattr__(self, "_settings", None)
            self.index = next(self._index)
            self.chroot = zk_chroot_fixture.zookeeper_chroot
            self.namespace = f"{CONFIG.namespace_prefix}-{self.index}"
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", CONFIG.current_test.split(".", 3)[-1])
            self.dir = CONFIG.logs / f"{self.index:02d}-{safe}"
            self.dir.mkdir(parents=True, exist_ok=True)
            self.procs = {}
            self._paused = False
            self._stopped = False
            self.override_python_path = None
            self.client = kazoo.client.KazooClient(
                hosts=f"{zk_chroot_fixture.zookeeper_host}:{zk_chroot_fixture.zookeeper_port}{self.chroot}",
                use_ssl=True,
                keyfile=zk_chroot_fixture.zookeeper_key,
                certfile=zk_chroot_fixture.zookeeper_cert,
                ca=zk_chroot_fixture.zookeeper_ca,
                timeout=60,
            )
            LIVE.append(self)
            # Stop before Zuul's chroot fixture deletes the chroot (its cleanups run last-in
            # first-out), even when the test's setUp fails before it registers its own stop.
            zk_chroot_fixture.addCleanup(self.stop)
            started = time.monotonic()
            try:
                self.client.start()
                self._kubectl(["create", "namespace", self.namespace])
                self._kubectl(["apply", "--server-side", "--field-manager", "nodepool-e2e", "-f", "-"],
                              json.dumps(self.provider()))
                self.procs["bridge"] = self._spawn("bridge", CONFIG.bridge, {
                    "NODEPOOL_ZOOKEEPER_HOSTS": f"{CONFIG.zk_hosts}{self.chroot}",
                    "NODEPOOL_ZOOKEEPER_TLS_CA": CONFIG.zk_ca,
                    "NODEPOOL_ZOOKEEPER_TLS_CERT": CONFIG.zk_cert,
                    "NODEPOOL_ZOOKEEPER_TLS_KEY": CONFIG.zk_key,
                    "NODEPOOL_HOSTNAME": "zuul-unit-bridge",
                    "NODEPOOL_REQUEST_LOCK_MAX_AGE": "1",
                    **({"NODEPOOL_ZOOKEEPER_SESSION_TIMEOUT": str(CONFIG.session_timeout)}
                       if CONFIG.session_timeout else {}),
                })
                self.procs["operator"] = self._spawn("operator", CONFIG.operator, {})
                nodes = self._wait_ready()
            except BaseException:
                self.stop()
                raise
            self._settings = self._read_settings(nodes[0])
            log(f"launcher {self.index} ready in {time.monotonic() - started:.1f} s: namespace {self.namespace}, "
                f"chroot {self.chroot}, {len(nodes)} ready nodes, bridge pid {self.procs['bridge'].pid}, "
                f"operator pid {self.procs['operator'].pid}, logs {self.dir}")

        # -- setup ---------------------------------------------------------

        def provider(self):
            return {
                "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider",
                "metadata": {"name": "test-provider", "namespace": self.namespace},
                "spec": {"driver": "static", "pools": [{
                    "name": "main",
                    "hosts": [{"name": "127.0.0.1", "labels": list(CONFIG.labels),
                               "connectionPort": CONFIG.sshd_port, "maxParallelJobs": CONFIG.slots}],
                }]},
            }

        def _kubectl(self, args, stdin=None):
            result = subprocess.run([CONFIG.kubectl, "--kubeconfig", CONFIG.kubeconfig, *args],
                                    input=stdin, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
            return result.stdout

        def _spawn(self, name, binary, extra):
            env = dict(os.environ)
            env.update({
                "KUBECONFIG": CONFIG.kubeconfig,
                "NODEPOOL_NAMESPACE": self.namespace,
                "NODEPOOL_HTTP_ADDRESS": free_loopback_address(),
                "NODEPOOL_CLEANUP_INTERVAL": "1",
                "RUST_LOG": CONFIG.rust_log,
            })
            env.update(extra)
            out = open(self.dir / f"{name}.log", "ab")
            try:
                return subprocess.Popen([binary], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=die_with_parent)
            finally:
                out.close()

        def _ready_nodes(self):
            ready = []
            for node in self.getNodes():
                if (node.get("state") == "ready" and not node.get("allocated_to") and not node["_lock"]
                        and all(label in (node.get("type") or []) for label in CONFIG.labels)):
                    ready.append(node)
            return ready

        def _advertised_labels(self):
            labels = set()
            path = f"{self.COMPONENT_ROOT}/pool"
            try:
                children = self.client.get_children(path)
            except kazoo.exceptions.NoNodeError:
                return labels
            for child in children:
                try:
                    data, _ = self.client.get(f"{path}/{child}")
                    labels.update(json.loads(data).get("supported_labels") or [])
                except (kazoo.exceptions.NoNodeError, ValueError):
                    pass
            return labels

        def _wait_ready(self):
            deadline = time.monotonic() + CONFIG.ready_timeout
            while True:
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited with {proc.returncode}: {self._tail(name)}")
                try:
                    nodes = self._ready_nodes()
                except kazoo.exceptions.NoNodeError:
                    nodes = []
                if len(nodes) >= CONFIG.slots and set(CONFIG.labels) <= self._advertised_labels():
                    return nodes
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"only {len(nodes)} of {CONFIG.slots} nodes ready in ZooKeeper after "
                        f"{CONFIG.ready_timeout:.0f} s; see {self.dir}\n{self._tail('operator')}\n{self._tail('bridge')}")
                time.sleep(0.2)

        def _tail(self, name, lines=20):
            try:
                text = (self.dir / f"{name}.log").read_text(errors="replace").splitlines()
            except OSError:
                return ""
            return f"--- {name}.log ---\n" + "\n".join(text[-lines:])

        # -- what the tests use ----------------------------------------------

        def pause(self):
            """FakeNodepool stops fulfilling requests; we stop both processes.
            Returns once the kernel reports both as stopped."""
            if self._stopped:
                return
            for proc in self.procs.values():
                os.kill(proc.pid, signal.SIGSTOP)
            deadline = time.monotonic() + 10
            while any(proc_state(p.pid) not in ("T", "t", None) for p in self.procs.values()):
                if time.monotonic() > deadline:
                    raise RuntimeError("SIGSTOP did not stop the launcher within 10 s")
                time.sleep(0.005)
            self._paused = True

        def unpause(self):
            for proc in self.procs.values():
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
            self._paused = False

        @property
        def paused(self):
            return self._paused

        @paused.setter
        def paused(self, value):
            # Some tests flip FakeNodepool.paused directly; for us that is the same as pause().
            if value:
                self.pause()
            else:
                self.unpause()

        def stop(self):
            if self._stopped:
                return
            self._stopped = True
            for proc in self.procs.values():
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
                    os.kill(proc.pid, signal.SIGTERM)
            for name, proc in self.procs.items():
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    log(f"{name} (pid {proc.pid}) ignored SIGTERM for 15 s; SIGKILL")
                    proc.kill()
                    proc.wait()
            try:
                self.client.stop()
                self.client.close()
            except Exception:  # noqa: BLE001 - never fail a cleanup over a closing client
                pass
            if self in LIVE:
                LIVE.remove(self)

        # -- node settings the fake would write into the nodes it makes ------

        def _read_settings(self, node):
            return {
                "attributes": node.get("attributes"),
                "resources": node.get("resources"),
                "python_path": node.get("python_path"),
                "shell_type": node.get("shell_type"),
                "connection_port": node.get("connection_port"),
                "host_keys": node.get("host_keys"),
                # The fake's remote_ansible means "connection_type ssh and scanned host keys".
                "remote_ansible": node.get("connection_type") == "ssh" and bool(node.get("host_keys")),
            }

        def __getattr__(self, name):
            settings = self.__dict__.get("_settings")
            if name in OperatorNodepool._settings_names and settings is not None:
                return settings[name]
            raise AttributeError(name)

        def __setattr__(self, name, value):
            if name in OperatorNodepool._settings_names and self._settings is not None:
                if value != self._settings[name]:
                    raise NotRunnable(
                        f"the test sets FakeNodepool.{name} = {value!r}; the static provider's nodes carry "
                        f"{self._settings[name]!r}")
                return
            object.__setattr__(self, name, value)

        # -- what a real launcher cannot be told to do ------------------------

        def addFailRequest(self, request):
            raise NotRunnable("FakeNodepool.addFailRequest (fail one chosen request)")

        def fulfillRequest(self, request):
            raise NotRunnable("FakeNodepool.fulfillRequest (fulfill one chosen request while paused)")

        def removeNode(self, node):
            raise NotRunnable("FakeNodepool.removeNode (delete a node behind the launcher's back)")

        def registerLauncher(self, labels=None, id=None):
            raise NotRunnable("FakeNodepool.registerLauncher (advertise a fake pool component)")

        def makeNode(self, *args, **kwargs):
            raise NotRunnable("FakeNodepool.makeNode")

        @property
        def history(self):
            raise NotRunnable("FakeNodepool.history (the fake's record of requests it handled)")

        @property
        def fail_requests(self):
            raise NotRunnable("FakeNodepool.fail_requests")

    return OperatorNodepool, NotRunnable


def run_tests(args):
    import unittest

    env = json.loads(pathlib.Path(args.testenv_json).read_text())
    zk = env["zookeeper"]
    if "," in zk["hosts"] or "/" in zk["hosts"]:
        fail(f"Zuul's ChrootedKazooFixture takes one host:port, not {zk['hosts']!r}")
    CONFIG.kubeconfig = env["kubeconfig"]
    CONFIG.zk_hosts, CONFIG.zk_ca, CONFIG.zk_cert, CONFIG.zk_key = (
        zk["hosts"], zk["tls_ca"], zk["tls_cert"], zk["tls_key"])
    CONFIG.operator = args.operator or os.environ.get("NODEPOOL_OPERATOR_BIN")
    CONFIG.bridge = args.bridge or os.environ.get("NODEPOOL_BRIDGE_BIN")
    for name in ("operator", "bridge"):
        path = getattr(CONFIG, name)
        if not path or not os.access(path, os.X_OK):
            fail(f"--{name}: {path!r} is not an executable")
    CONFIG.kubectl = args.kubectl or str(CACHE / "tools/bin/kubectl")
    CONFIG.sshd_port = args.sshd_port
    CONFIG.labels = fixture_labels() if args.labels == "auto" else [l for l in args.labels.split(",") if l]
    CONFIG.slots = args.slots
    CONFIG.namespace_prefix = args.namespace_prefix
    CONFIG.logs = pathlib.Path(args.logs)
    CONFIG.logs.mkdir(parents=True, exist_ok=True)
    CONFIG.session_timeout = args.session_timeout
    CONFIG.ready_timeout = args.ready_timeout
    CONFIG.rust_log = os.environ.get("NODEPOOL_E2E_LOG", "info")

    # How Zuul's tests find ZooKeeper (tests/base.py ChrootedKazooFixture).
    os.environ.pop("ZOOKEEPER_2181_TCP", None)
    os.environ["ZUUL_ZK_HOST"] = CONFIG.zk_hosts
    os.environ["ZUUL_ZK_CA"] = CONFIG.zk_ca
    os.environ["ZUUL_ZK_CERT"] = CONFIG.zk_cert
    os.environ["ZUUL_ZK_KEY"] = CONFIG.zk_key
    # Zuul's logs go into each test's details (written to the logs directory), not stdout.
    os.environ.setdefault("OS_LOG_CAPTURE", "1")
    os.environ.setdefault("OS_TEST_TIMEOUT", str(args.test_timeout))

    # The installed zuul package first, then the sdist's tests/ package.
    import zuul  # noqa: F401
    sys.path.insert(0, str(SOURCE))
    import testtools
    import tests.base

    if not pathlib.Path(tests.base.__file__).is_relative_to(SOURCE):
        fail(f"tests.base came from {tests.base.__file__}, not {SOURCE}")
    original = tests.base.FakeNodepool
    operator_nodepool, not_runnable = make_operator_nodepool(original, unittest)
    tests.base.FakeNodepool = operator_nodepool
    suite = unittest.TestLoader().loadTestsFromNames(args.tests or DEFAULT_TESTS)
    # Modules that did `from tests.base import FakeNodepool` hold their own reference.
    for name, module in list(sys.modules.items()):
        if (name == "tests" or name.startswith("tests.")) and getattr(module, "FakeNodepool", None) is original:
            module.FakeNodepool = operator_nodepool

    def flatten(s):
        for item in s:
            if isinstance(item, unittest.TestSuite):
                yield from flatten(item)
            else:
                yield item

    selected = list(flatten(suite))
    for test in selected:
        if isinstance(test, unittest.loader._FailedTest):  # an import error of a named test
            print(f"ERROR {test.id()}\n{test._exception}")
    log(f"{len(selected)} test(s); Zuul {ZUUL_VERSION} from {SOURCE}; logs in {CONFIG.logs}")

    class Result(testtools.TestResult):
        def __init__(self):
            super().__init__()
            self.outcomes = []

        def startTest(self, test):
            super().startTest(test)
            CONFIG.current_test = test.id()
            self._started = time.monotonic()
            self._outcome = None
            log(f"start {test.id()}")

        def _record(self, test, status, details=None, text=None):
            if self._outcome and self._outcome[0] != "PASS":
                # First outcome wins; later ones (cleanups) are appended.
                if self._outcome[0] != "NOT-RUNNABLE":
                    self._outcome = (self._outcome[0], self._outcome[1] + "\n" + (text or ""), self._outcome[2])
                return
            self._outcome = (status, text or "", details or {})

        @staticmethod
        def _text(details, err):
            if details:
                parts = [f"{key}:\n{value.as_text()}" for key, value in details.items() if key != "logging"]
                return "\n".join(parts)
            if err:
                return "".join(traceback.format_exception(*err))
            return ""

        def addSuccess(self, test, details=None):
            super().addSuccess(test, details=details)
            if not self._outcome:
                self._outcome = ("PASS", "", details or {})

        @staticmethod
        def _not_runnable(details, err):
            """The reason, if the test's own exception was NotRunnable. A test stopped half-way
            usually fails its final-state cleanup checks too; those are consequences."""
            if err is not None:
                return str(err[1]) if isinstance(err[1], not_runnable) else None
            first = (details or {}).get("traceback")
            last = first.as_text().strip().splitlines()[-1] if first else ""
            marker = "not runnable against a real launcher"
            return last.split(": ", 1)[1] if "NotRunnable: " in last and marker in last else None

        def addFailure(self, test, err=None, details=None):
            super().addFailure(test, err=err, details=details)
            reason = self._not_runnable(details, err)
            if reason:
                self._record(test, "NOT-RUNNABLE", details, reason)
            else:
                self._record(test, "FAIL", details, self._text(details, err))

        def addError(self, test, err=None, details=None):
            super().addError(test, err=err, details=details)
            reason = self._not_runnable(details, err)
            if reason:
                self._record(test, "NOT-RUNNABLE", details, reason)
            else:
                self._record(test, "ERROR", details, self._text(details, err))

        def addSkip(self, test, reason=None, details=None):
            super().addSkip(test, reason=reason, details=details)
            if details and "reason" in details:
                reason = details["reason"].as_text()
            status = "NOT-RUNNABLE" if reason and "not runnable against a real launcher" in reason else "SKIP"
            self._record(test, status, details, reason)

        def addUnexpectedSuccess(self, test, details=None):
            super().addUnexpectedSuccess(test, details=details)
            self._record(test, "FAIL", details, "unexpected success")

        def addExpectedFailure(self, test, err=None, details=None):
            super().addExpectedFailure(test, err=err, details=details)
            self._record(test, "PASS", details, "expected failure")

        def stopTest(self, test):
            super().stopTest(test)
            # Safety net: a test whose setUp failed after starting a launcher never stops it.
            for launcher in list(LIVE):
                launcher.stop()
            status, text, details = self._outcome or ("ERROR", "no outcome reported", {})
            elapsed = time.monotonic() - self._started
            test_log = CONFIG.logs / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', test.id())}.log"
            stream = getattr(test, "_log_stream", None)
            logs = stream.getvalue() if hasattr(stream, "getvalue") else ""
            if not logs and "logging" in details:
                logs = details["logging"].as_text()
            test_log.write_text(logs)
            self.outcomes.append((test.id(), status, elapsed, text, str(test_log)))
            print(f"{status} {test.id()} ({elapsed:.1f} s)", flush=True)
            if status != "PASS" and text:
                print("    " + text.rstrip().replace("\n", "\n    "), flush=True)
                if status in ("FAIL", "ERROR"):
                    print(f"    Zuul's log of this test: {test_log}", flush=True)

    mariadb = PrivateMariaDB(CONFIG.logs / "mariadb") if args.mysql == "private" else None
    result = Result()
    # FakeNodepool's nodes have no connection type, so in AnsibleZuulTestCase Ansible runs
    # "locally" on the executor; real static nodes are ssh hosts Zuul's executor would have to
    # log in to (a user and Zuul's test key on the sshd), which these tests do not set up.
    ansible_case = getattr(tests.base, "AnsibleZuulTestCase", None)
    try:
        if mariadb:
            mariadb.start()
        for test in selected:
            if ansible_case is not None and isinstance(test, ansible_case):
                result.startTest(test)
                result.addSkip(test, reason=(
                    "not runnable against a real launcher: an AnsibleZuulTestCase runs real Ansible, "
                    "which FakeNodepool's nodes point at the executor itself (no connection type); "
                    "static nodes are ssh hosts the executor would have to log in to"))
                result.stopTest(test)
                continue
            test.run(result)
    finally:
        if mariadb:
            mariadb.stop()

    passed = sum(1 for o in result.outcomes if o[1] == "PASS")
    not_run = [o for o in result.outcomes if o[1] in ("NOT-RUNNABLE", "SKIP")]
    failed = len(result.outcomes) - passed - len(not_run)
    if args.results:
        pathlib.Path(args.results).write_text(json.dumps([
            {"test": t, "status": s, "seconds": round(e, 2), "detail": d, "log": lg}
            for t, s, e, d, lg in result.outcomes], indent=2))
    print("")
    for test_id, status, elapsed, _, _ in result.outcomes:
        print(f"  {status:<12} {test_id}")
    if not_run:
        print(f"{len(not_run)} not runnable")
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and not not_run and passed > 0 else 1


# ---------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default=str(DEFAULT_VENV))
    sub = parser.add_subparsers(dest="action", required=True)
    ins = sub.add_parser("install", help="create the venv and fetch Zuul's sdist (idempotent)")
    ins.add_argument("--ansible", action="store_true",
                     help="also run zuul-manage-ansible (needed by ZuulTestCase-based tests)")
    chk = sub.add_parser("check", help="FakeNodepool features each test of the given files uses")
    chk.add_argument("files", nargs="*", help="test files (default: Zuul's tests/unit/*.py)")
    run = sub.add_parser("run", help="run Zuul unit tests against the operator and the bridge")
    run.add_argument("--testenv-json", required=True, help="what `nodepool-testenv up` prints")
    run.add_argument("--operator", help="nodepool-operator binary ($NODEPOOL_OPERATOR_BIN)")
    run.add_argument("--bridge", help="nodepool-zk-bridge binary ($NODEPOOL_BRIDGE_BIN)")
    run.add_argument("--kubectl", help="kubectl (default: <cache>/tools/bin/kubectl)")
    run.add_argument("--sshd-port", type=int, required=True, help="a real sshd on 127.0.0.1")
    run.add_argument("--labels", default="ubuntu-xenial",
                     help="comma-separated labels of the static host, or `auto`: every label Zuul's "
                          "test fixtures name, except those FakeNodepool shapes specially")
    run.add_argument("--slots", type=int, default=4, help="maxParallelJobs of the static host")
    run.add_argument("--namespace-prefix", default=f"zuul-unit-{os.getpid()}",
                     help="test N runs in namespace <prefix>-N (created)")
    run.add_argument("--logs", default="/tmp/zuul-unit-tests", help="directory for all logs")
    run.add_argument("--session-timeout", type=int,
                     help="bridge ZooKeeper session timeout, s (default: the bridge's, 10)")
    run.add_argument("--ready-timeout", type=float, default=120.0)
    run.add_argument("--test-timeout", type=int, default=300, help="OS_TEST_TIMEOUT per test")
    run.add_argument("--results", help="also write the results as JSON here")
    run.add_argument("--ansible", action="store_true",
                     help="make sure zuul-manage-ansible has run (ZuulTestCase-based tests need it)")
    run.add_argument("--mysql", choices=["none", "private"], default="none",
                     help="private: start a throw-away MariaDB for ZuulTestCase-based tests "
                          "(needs the mariadb-server package; $ZUUL_MYSQL_HOST/PORT otherwise)")
    run.add_argument("tests", nargs="*", help=f"unittest names (default: {' '.join(DEFAULT_TESTS)})")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    venv = pathlib.Path(args.venv)
    if args.action == "install":
        print(json.dumps(install(venv, ansible=args.ansible), sort_keys=True))
        return 0
    if args.action == "check":
        # Paths like tests/unit/test_scheduler.py are taken relative to the sdist.
        files = [f if os.path.exists(f) else str(SOURCE / f) for f in args.files] or sorted(
            str(p) for p in (SOURCE / "tests/unit").glob("test_*.py"))
        for entry in check(files):
            print(json.dumps(entry, sort_keys=True))
        return 0
    inside = pathlib.Path(sys.prefix).resolve() == venv.resolve()
    if not inside:
        install(venv, ansible=args.ansible)
        python = venv / "bin/python"
        os.execv(str(python), [str(python), os.path.abspath(__file__), *argv])
    return run_tests(args)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
