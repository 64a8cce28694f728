#!/usr/bin/env python3
"""Act like a Zuul 14.3.0 scheduler + executor against a Nodepool ZooKeeper.

Everything that touches ZooKeeper goes through Zuul's own classes:

* ``zuul.zk.ZooKeeperClient`` (TLS client cert, chroot in the hosts string),
  one session for the "scheduler" and a second one for the "executor", as in a
  real deployment (node locks are held by the executor's session);
* ``zuul.zk.system.ZuulSystem`` for the system id (``/zuul-system``) that Zuul
  puts in ``requestor``;
* ``zuul.nodepool.Nodepool`` -- the scheduler instance with ``scheduler=True``
  (TreeCaches on ``/nodepool/requests`` and ``/nodepool/nodes`` plus the
  ``/zuul/nodepool/election``), the executor instance with ``scheduler=False``;
  it owns a ``zuul.zk.nodepool.ZooKeeperNodepool``;
* ``zuul.model.Job`` / ``NodeSet`` / ``Node`` / ``NodeRequest`` / ``HoldRequest``.

The only shims (see the comments where they are used):

* ``SchedulerNodepool._sendNodesProvisionedEvent``: real Zuul puts a
  ``NodesProvisionedEvent`` on the tenant/pipeline result queue in ZooKeeper and
  its scheduler main loop later runs ``Scheduler._doNodesProvisionedEvent``.
  We have no scheduler main loop, so this one hop is replaced by an in-process
  notification; everything before it (TreeCache -> requestCacheListener ->
  ``Nodepool._handleNodeRequestEvent`` -> election check) is Zuul's code, and
  ``ZuulDriver.wait`` then does what ``_doNodesProvisionedEvent`` does.
* ``_ZuulEvent`` (only ``zuul_event_id`` is read by ``requestNodes``) and
  ``_Build`` (only ``uuid`` is read by ``holdNodeSet``/``returnNodeSet``).
  The job is a real ``model.Job`` exactly like Zuul's own
  ``tests/unit/test_nodepool.py`` builds it.

Tracing: ``zuul.lib.tracing.Tracing(ConfigParser())`` installs the OTel SDK
tracer provider (export disabled) like every Zuul service does at start-up, so
``submitNodeRequest`` stores a real ``span_info`` with a random 128-bit
``trace_id`` in ``requestor_data``.

Run with the venv that has zuul==14.3.0 (``~/.cache/nodepool-operator/
venv-zuul``); when started with another interpreter the script re-executes
itself with that venv's python.  CLI / JSON-lines protocol: see ``--help`` and
``e2e/zuul/README.md``.  Every stdout line is one JSON object; logs go to
stderr.
"""

import os
import sys

_VENV_PY = os.path.expanduser(os.environ.get(
    "ZUUL_VENV_PYTHON", "~/.cache/nodepool-operator/venv-zuul/bin/python"))
try:
    import zuul.nodepool  # noqa: F401
except ImportError:  # pragma: no cover - re-exec in the zuul venv
    # (a venv's python is a symlink to the base interpreter, so compare
    # environments, and guard against exec loops)
    if os.path.exists(_VENV_PY) and not os.environ.get("_ZUUL_DRIVER_REEXEC"):
        os.environ["_ZUUL_DRIVER_REEXEC"] = "1"
        os.execv(_VENV_PY, [_VENV_PY] + sys.argv)
    raise

import argparse  # noqa: E402
import collections  # noqa: E402
import configparser  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import uuid  # noqa: E402

from kazoo.client import KazooClient  # noqa: E402
from kazoo.exceptions import NoNodeError  # noqa: E402

from zuul import model  # noqa: E402
from zuul.lib import tracing  # noqa: E402
from zuul.nodepool import Nodepool  # noqa: E402
from zuul.zk import ZooKeeperClient  # noqa: E402
from zuul.zk.nodepool import NodeRequestEvent  # noqa: E402
from zuul.zk.system import ZuulSystem  # noqa: E402

log = logging.getLogger("zuul_driver")

NODES_ROOT = "/nodepool/nodes"
REQUEST_ROOT = "/nodepool/requests"
LOCK_MARK = "__lock__"


class DriverError(Exception):
    pass


class NodeFailure(DriverError):
    """What the executor turns into a NODE_FAILURE build result."""


# --------------------------------------------------------------------------
# setup helpers

_tracing = None


def init_tracing():
    # Same as every Zuul service (and tests/unit/test_nodepool.py setUp):
    # installs an SDK TracerProvider; with [tracing] disabled no exporter.
    global _tracing
    if _tracing is None:
        _tracing = tracing.Tracing(configparser.ConfigParser())
    return _tracing


def ensure_chroot(hosts, chroot, tls_ca, tls_cert, tls_key):
    """kazoo needs the chroot znode to exist; create it outside the chroot."""
    zk = KazooClient(hosts=hosts, use_ssl=True, certfile=tls_cert,
                     keyfile=tls_key, ca=tls_ca)
    zk.start(20)
    try:
        zk.ensure_path(chroot)
    finally:
        zk.stop()
        zk.close()


def connect_zuul_client(hosts, chroot, tls_ca, tls_cert, tls_key, timeout):
    # zuul.zk.ZooKeeperClient.fromConfig() semantics: TLS is mandatory and
    # the chroot is appended to the hosts string ("h1:p1,h2:p2/chroot").
    client = ZooKeeperClient(hosts + chroot, timeout=timeout,
                             tls_cert=tls_cert, tls_key=tls_key,
                             tls_ca=tls_ca)
    client.connect()
    return client


def percentile(sorted_vals, pct):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1,
                   int(-(-pct * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


# --------------------------------------------------------------------------
# the Zuul pieces

class _ZuulEvent:
    """Shim for the trigger event: requestNodes() only reads zuul_event_id."""

    def __init__(self):
        self.zuul_event_id = uuid.uuid4().hex


class _Build:
    """Shim for the executor's BuildRequest: only ``uuid`` is read."""

    def __init__(self, request_id, nodeset):
        self.uuid = uuid.uuid4().hex
        self.request_id = request_id
        self.nodeset = nodeset
        self.start = time.monotonic()

    def __repr__(self):
        return "<Build %s request %s>" % (self.uuid, self.request_id)


class SchedulerNodepool(Nodepool):
    """``zuul.nodepool.Nodepool(scheduler=True)`` with an in-process sink.

    Same pattern as ``NodepoolWithCallback`` in Zuul's
    tests/unit/test_nodepool.py.  Events reach us exactly as in Zuul:
    ZooKeeperNodepool's TreeCache -> ``_requestCacheListener`` (edge triggered
    on the transition into fulfilled/failed) -> ``_handleNodeRequestEvent``
    (requestor == system id, election won and still valid) ->
    ``_sendNodesProvisionedEvent``; replay of already completed requests
    happens in ``_electionWon``.
    """

    def __init__(self, zk_client, system_id, use_election=True):
        # Must exist before Nodepool.__init__ starts the TreeCaches.
        self.use_election = use_election
        self._cond = threading.Condition()
        self._completed = {}                        # id -> (state, mono)
        self._deleted = collections.OrderedDict()   # id -> cached state
        super().__init__(zk_client, system_id, statsd=None, scheduler=True)

    def _sendNodesProvisionedEvent(self, request):
        # SHIM: Zuul ends the saved span (kept) and then does
        #   self.pipeline_result_events[tenant][pipeline].put(
        #       model.NodesProvisionedEvent(request.id, build_set_uuid))
        # which only a scheduler main loop would consume.  Notify in-process.
        tracing.endSavedSpan(request.span_info, attributes={
            "request_id": request.id,
            "state": request.state,
        })
        with self._cond:
            self._completed.setdefault(request.id,
                                       (request.state, time.monotonic()))
            self._cond.notify_all()

    def _handleNodeRequestEvent(self, request, event):
        super()._handleNodeRequestEvent(request, event)
        if (not self.use_election and event == NodeRequestEvent.COMPLETED
                and request.requestor == self.system_id):
            # DEVIATION (--no-election): several driver processes sharing
            # one chroot; only one of them can win /zuul/nodepool/election,
            # so the others take completions straight from their cache.
            self._sendNodesProvisionedEvent(request)
        # Zuul passes deletions to this callback but does not act on them;
        # record them (with the state the cache had) for cancel checks.
        if (event == NodeRequestEvent.DELETED and
                request.requestor == self.system_id):
            with self._cond:
                self._deleted[request.id] = request.state
                while len(self._deleted) > 10000:
                    self._deleted.popitem(last=False)
                self._cond.notify_all()

    def wait_completed(self, request_id, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            while request_id not in self._completed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        "request %s not completed after %ss" %
                        (request_id, timeout))
                self._cond.wait(left)
            return self._completed.pop(request_id)

    def wait_deleted(self, request_id, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            while request_id not in self._deleted:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no deletion event for %s" %
                                       request_id)
                self._cond.wait(left)
            return self._deleted.pop(request_id)

    def forget(self, request_id):
        with self._cond:
            self._completed.pop(request_id, None)
            self._deleted.pop(request_id, None)


def node_view(node):
    """JSON view of a zuul.model.Node as the executor holds it."""
    d = {"id": node.id, "name": list(node.name) if node.name else None,
         "label": node.label, "state": node.state,
         "locked": node.lock is not None}
    for k in ("allocated_to", "provider", "pool", "type", "hostname",
              "interface_ip", "connection_port", "connection_type",
              "username", "slot", "python_path", "host_keys", "user_data",
              "hold_job", "comment", "hold_expiration", "tenant_name",
              "requestor", "attributes", "shell_type", "public_ipv4",
              "private_ipv4"):
        d[k] = getattr(node, k, None)
    return d


class ZuulDriver:
    """A minimal Zuul: scheduler-side and executor-side node handling."""

    def __init__(self, hosts, tls_ca, tls_cert, tls_key, chroot,
                 session_timeout=120.0, tenant="tenant-one",
                 pipeline="check", project="review.example.com/org/project",
                 use_election=True):
        if not chroot.startswith("/") or chroot == "/":
            raise DriverError("chroot must be an absolute non-root path")
        self.chroot = chroot
        self.tenant = tenant
        self.pipeline = pipeline
        self.project = project
        ensure_chroot(hosts, chroot, tls_ca, tls_cert, tls_key)
        init_tracing()
        # Scheduler process: ZooKeeperClient + ZuulSystem + Nodepool(sched)
        self.sched_zk = connect_zuul_client(hosts, chroot, tls_ca, tls_cert,
                                            tls_key, session_timeout)
        self.system_id = ZuulSystem(self.sched_zk).system_id
        self.scheduler = SchedulerNodepool(self.sched_zk, self.system_id,
                                           use_election)
        # Executor process (executor/server.py: Nodepool(zk, system_id,
        # statsd) without scheduler=True -> no caches, direct reads).
        self.exec_zk = connect_zuul_client(hosts, chroot, tls_ca, tls_cert,
                                           tls_key, session_timeout)
        self.executor = Nodepool(self.exec_zk, self.system_id, None)
        self._lock = threading.Lock()
        self._jobs = {}        # request id -> model.Job (scheduler's copy)
        self._t_submit = {}    # request id -> monotonic time before create
        self._submitted_rd = {}  # request id -> requestor_data as written
        self._builds = {}      # build uuid -> _Build
        self._node_cond = threading.Condition()
        tree = self.scheduler.zk_nodepool._node_tree
        if tree is not None:
            # Listener appended after Zuul's own -> _node_cache is current.
            tree.listen(self._on_node_event)
        if use_election:
            self.wait_election(15)

    # ---------------------------------------------------------------- misc
    def close(self):
        try:
            self.scheduler.stop()   # cancels the election, joins its thread
        finally:
            self.exec_zk.disconnect()
            self.sched_zk.disconnect()

    def _on_node_event(self, event):
        with self._node_cond:
            self._node_cond.notify_all()

    def wait_election(self, timeout=15.0):
        """Nodepool.runEventElection must win before events are sent."""
        deadline = time.monotonic() + timeout
        while not self.scheduler.election_won:
            if time.monotonic() > deadline:
                raise DriverError("nodepool event election not won")
            time.sleep(0.05)
        return {"election_won": True}

    def launchers(self):
        # ZooKeeperNodepool.getRegisteredLaunchers(): what zuul-web uses for
        # the labels API (reads only id + supported_labels).
        return [{"id": x.id, "supported_labels": sorted(x.supported_labels)}
                for x in self.scheduler.zk_nodepool.getRegisteredLaunchers()]

    def wait_launcher(self, labels, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            pools = self.launchers()
            have = set()
            for p in pools:
                have.update(p["supported_labels"])
            if set(labels) <= have:
                return {"pools": pools}
            if time.monotonic() > deadline:
                raise TimeoutError("labels %s not registered (have %s)" %
                                   (labels, sorted(have)))
            time.sleep(0.2)

    def _job(self, request_id, request=None):
        """The scheduler's job for a request.  For a request this process
        did not submit (e.g. a previous driver process with the same
        /zuul-system id) rebuild the nodeset from its node_types."""
        with self._lock:
            job = self._jobs.get(request_id)
        if job is not None:
            return job
        if request is None:
            request = self.scheduler.zk_nodepool.getNodeRequest(request_id)
        if request is None:
            raise NodeFailure("node request %s not found" % request_id)
        job = model.Job(request.job_name or "unknown-job")
        job.uuid = request.job_uuid
        nodeset = model.NodeSet()
        for i, label in enumerate(request.labels):
            nodeset.addNode(model.Node(["node%d" % i], label))
        job.nodeset = nodeset
        return job

    def _build(self, build_id):
        with self._lock:
            b = self._builds.get(build_id)
        if b is None:
            raise DriverError("unknown build %s" % build_id)
        return b

    # ------------------------------------------------------- raw read-outs
    def raw_request(self, request_id):
        kz = self.exec_zk.client
        try:
            data, stat = kz.get("%s/%s" % (REQUEST_ROOT, request_id))
        except NoNodeError:
            return None
        return {"id": request_id, "version": stat.version,
                "data": json.loads(data) if data else None}

    def raw_node(self, node_id):
        """Node znode data plus its kazoo lock contenders."""
        kz = self.exec_zk.client
        path = "%s/%s" % (NODES_ROOT, node_id)
        try:
            data, stat = kz.get(path)
        except NoNodeError:
            return None
        try:
            contenders = [c for c in kz.get_children(path + "/lock")
                          if LOCK_MARK in c]
        except NoNodeError:
            contenders = []
        return {"id": node_id, "version": stat.version,
                "data": json.loads(data) if data else None,
                "lock_contenders": sorted(contenders),
                "locked": bool(contenders)}

    def wait_node_gone(self, node_id, timeout=30.0):
        """Event-driven: exists() watch until the node znode is deleted."""
        kz = self.exec_zk.client
        path = "%s/%s" % (NODES_ROOT, node_id)
        fired = threading.Event()
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while True:
            fired.clear()
            if kz.exists(path, watch=lambda ev: fired.set()) is None:
                return {"node_id": node_id, "gone": True,
                        "waited_ms": round((time.monotonic() - t0) * 1000, 1)}
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("node %s still exists" % node_id)
            fired.wait(left)

    def wait_nodes(self, predicate, timeout=30.0):
        """Wait until predicate(list of cached model.Node) returns truthy.

        Uses the scheduler's node TreeCache (Zuul's _node_cache); woken by a
        cache listener, re-checked at least every 0.5 s.
        """
        deadline = time.monotonic() + timeout
        with self._node_cond:
            while True:
                nodes = list(self.scheduler.zk_nodepool._node_cache.values())
                res = predicate(nodes)
                if res:
                    return res
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("node condition not met")
                self._node_cond.wait(min(left, 0.5))

    # --------------------------------------------------------- scheduler
    def request(self, labels, priority=200, relative_priority=0,
                provider=None, job_name="test-job", tenant=None,
                pipeline=None, build_set_uuid=None):
        """Submit a node request as the scheduler does.

        Mirrors the manager calling ``Nodepool.requestNodes(build_set_uuid,
        job, tenant_name, pipeline_name, provider, priority,
        relative_priority, event)``, which builds a ``model.NodeRequest`` and
        calls ``ZooKeeperNodepool.submitNodeRequest`` (persistent sequential
        ``/nodepool/requests/{priority:0>3}-``, created_time + span_info).
        """
        if not labels:
            raise DriverError("at least one label required (Zuul fulfils "
                              "empty nodesets locally)")
        job = model.Job(job_name)
        job.uuid = uuid.uuid4().hex
        nodeset = model.NodeSet()
        for i, label in enumerate(labels):
            nodeset.addNode(model.Node(["node%d" % i], label))
        job.nodeset = nodeset
        t0 = time.monotonic()
        req = self.scheduler.requestNodes(
            build_set_uuid or uuid.uuid4().hex, job,
            tenant or self.tenant, pipeline or self.pipeline, provider,
            priority, relative_priority, event=_ZuulEvent())
        with self._lock:
            self._jobs[req.id] = job
            self._t_submit[req.id] = t0
            self._submitted_rd[req.id] = req.toDict()["requestor_data"]
        return {"request_id": req.id, "labels": list(labels),
                "priority": "{:0>3}".format(priority),
                "relative_priority": relative_priority,
                "requestor": req.requestor, "event_id": req.event_id,
                "created_time": req.created_time,
                "job_uuid": job.uuid, "span_info": req.span_info}

    def wait(self, request_id, timeout=60.0):
        """Wait for fulfilled/failed, then do _doNodesProvisionedEvent.

        The wait is event driven (TreeCache watch -> election -> callback).
        Afterwards, like ``Scheduler._doNodesProvisionedEvent``: read the
        request fresh from ZK, ``Nodepool.getNodesetInfo(request,
        job.nodeset)``, and delete the request at once if it failed.
        """
        state, t_seen = self.scheduler.wait_completed(request_id, timeout)
        with self._lock:
            t0 = self._t_submit.pop(request_id, None)
            sent_rd = self._submitted_rd.pop(request_id, None)
        zk_nodepool = self.scheduler.zk_nodepool
        request = zk_nodepool.getNodeRequest(request_id)
        res = {"request_id": request_id, "state": state,
               "latency_ms": (round((t_seen - t0) * 1000, 2)
                              if t0 is not None else None)}
        if request is None:
            res["state_in_zk"] = None
            return res
        job = self._job(request_id, request)
        zkd = request._zk_data
        res["state_in_zk"] = request.state
        res["nodes"] = list(request.nodes)
        res["declined_by"] = zkd.get("declined_by", [])
        if zkd.get("created_time") and zkd.get("state_time"):
            res["nodepool_ms"] = round(
                (zkd["state_time"] - zkd["created_time"]) * 1000, 2)
        # Nodepool rewrote the request; requestor_data (incl. the 128-bit
        # span_info.trace_id) must come back unchanged.
        res["requestor_data_preserved"] = (
            zkd.get("requestor_data") == sent_rd if sent_rd is not None
            else (zkd.get("requestor_data") or {}).get("job_uuid") ==
            job.uuid)
        info = self.scheduler.getNodesetInfo(request, job.nodeset)
        res["nodeset_info"] = info.toDict()
        if request.state == model.STATE_FAILED:
            # "If the request failed, we must directly delete it as the
            # nodes will never be accepted."
            self.scheduler.deleteNodeRequest(request.id,
                                             event_id=request.id)
            res["deleted"] = True
        return res

    def cancel(self, request_id, timeout=10.0):
        """Scheduler.cancelJob: getNodeRequest + Nodepool.cancelRequest
        (plain delete of the request znode, no lock, any state)."""
        req = self.scheduler.zk_nodepool.getNodeRequest(request_id)
        if req is None:
            return {"request_id": request_id, "canceled": False,
                    "reason": "not found"}
        self.scheduler.cancelRequest(req)
        res = {"request_id": request_id, "canceled": True}
        try:
            res["cache_state_at_delete"] = self.scheduler.wait_deleted(
                request_id, timeout)
        except TimeoutError:
            res["cache_state_at_delete"] = None
        with self._lock:
            self._t_submit.pop(request_id, None)
            self._submitted_rd.pop(request_id, None)
        self.scheduler.forget(request_id)
        return res

    def revise(self, request_id, relative_priority):
        """PipelineManager._reviseNodeRequest + Nodepool.reviseRequest.

        Uses the *cached* request (scheduler TreeCache); only while it is
        ``requested``; takes ``/nodepool/requests-lock/<id>`` non-blocking
        (skips silently if a launcher holds it) and writes the whole request
        with ``version=stat.version`` of the cached copy.
        """
        zk_nodepool = self.scheduler.zk_nodepool
        node_request = zk_nodepool.getNodeRequest(request_id, cached=True)
        if not node_request:
            return {"request_id": request_id, "outcome": "not-found"}
        if node_request.state != model.STATE_REQUESTED:
            return {"request_id": request_id, "outcome": "not-requested",
                    "state": node_request.state}
        if node_request.relative_priority == relative_priority:
            return {"request_id": request_id, "outcome": "unchanged"}
        old = node_request.relative_priority
        ret = self.scheduler.reviseRequest(node_request, relative_priority)
        if ret is False:
            return {"request_id": request_id, "outcome": "locked"}
        # reviseRequest logs (and swallows) a BadVersionError; find out what
        # happened by reading the znode back.
        raw = self.raw_request(request_id)
        now = raw["data"].get("relative_priority") if raw else None
        return {"request_id": request_id,
                "outcome": ("revised" if now == relative_priority
                           else "write-failed"),
                "old": old, "new": relative_priority, "in_zk": now}

    def autohold(self, job_name, reason="zuul_driver", count=1,
                 node_expiration=None, ref_filter=".*", tenant=None,
                 project=None):
        """Scheduler.autohold: new HoldRequest stored unlocked (sequential
        znode under /zuul/hold-requests).  The globals default/max
        hold-expiration clamping of the real scheduler is not modelled."""
        request = model.HoldRequest()
        request.tenant = tenant or self.tenant
        request.project = project or self.project
        request.job = job_name
        request.ref_filter = ref_filter
        request.reason = reason
        request.max_count = count
        request.node_expiration = node_expiration
        self.scheduler.zk_nodepool.storeHoldRequest(request)
        return {"hold_request_id": request.id}

    def autohold_info(self, hold_request_id):
        r = self.scheduler.zk_nodepool.getHoldRequest(hold_request_id)
        return r.toDict() if r else None

    def autohold_delete(self, hold_request_id):
        """Scheduler.autohold_delete -> ZooKeeperNodepool.deleteHoldRequest:
        every held node still present is set ``used`` under a
        *non-blocking* node lock, then the hold request is deleted; if a
        node cannot be marked the hold request is kept."""
        zk_nodepool = self.scheduler.zk_nodepool
        req = zk_nodepool.getHoldRequest(hold_request_id)
        if req is None:
            return {"hold_request_id": hold_request_id, "deleted": False,
                    "reason": "not found"}
        nodes = [n for g in req.nodes for n in g.get("nodes", [])]
        # launcher_client is only used for NIZ ("niz": true) node groups.
        zk_nodepool.deleteHoldRequest(req, None)
        deleted = zk_nodepool.getHoldRequest(req.id) is None
        return {"hold_request_id": req.id, "deleted": deleted,
                "nodes": nodes}

    # ----------------------------------------------------------- executor
    def accept(self, request_id):
        """AnsibleJob.lockNodes -> Nodepool.acceptNodes (executor side).

        Read the request directly (no cache); for each node: read it,
        check allocated_to, lock it blocking with a 30 s timeout, re-check
        allocated_to; then delete the request whatever happened.
        """
        request = self.executor.zk_nodepool.getNodeRequest(request_id)
        if request is None:
            raise NodeFailure("node request %s not found" % request_id)
        job = self._job(request_id, request)
        nodeset = job.nodeset.copy()   # the executor's copy of job.nodeset
        try:
            self.executor.acceptNodes(request, nodeset)
        except Exception as e:
            raise NodeFailure("acceptNodes failed: %s" % e)
        finally:
            with self._lock:
                self._jobs.pop(request_id, None)
        build = _Build(request_id, nodeset)
        with self._lock:
            self._builds[build.uuid] = build
        self.scheduler.forget(request_id)
        return {"build": build.uuid, "request_id": request_id,
                "nodes": [node_view(n) for n in nodeset.getNodes()]}

    def use(self, build_id, project=None, tenant=None):
        """Nodepool.useNodeSet: in-use + user_data {zuul_system,
        project_name}, full-document write under the node lock."""
        b = self._build(build_id)
        self.executor.useNodeSet(b.nodeset, tenant or self.tenant,
                                 project or self.project)
        return {"build": build_id,
                "nodes": [node_view(n) for n in b.nodeset.getNodes()]}

    def hold(self, build_id, hold_request_id):
        """ExecutorServer._processAutohold (matching done by the caller) ->
        Nodepool.holdNodeSet: under the node locks write state hold,
        hold_job '<tenant> <project> <job> <ref_filter>', comment and
        hold_expiration; update the hold request under its lock (5 s).
        The nodes stay locked until return_()."""
        b = self._build(build_id)
        request = self.executor.zk_nodepool.getHoldRequest(hold_request_id)
        if request is None:
            raise DriverError("hold request %s not found" % hold_request_id)
        self.executor.holdNodeSet(b.nodeset, request, b,
                                  time.monotonic() - b.start)
        return {"build": build_id, "hold_request_id": request.id,
                "nodes": [node_view(n) for n in b.nodeset.getNodes()]}

    def return_(self, build_id, project=None, tenant=None):
        """AnsibleJob.unlockNodes -> Nodepool.returnNodeSet: nodes still
        in-use become used, then every node is unlocked (held ones too)."""
        with self._lock:
            b = self._builds.pop(build_id, None)
        if b is None:
            raise DriverError("unknown build %s" % build_id)
        self.executor.returnNodeSet(b.nodeset, b, tenant or self.tenant,
                                    project or self.project,
                                    time.monotonic() - b.start)
        return {"build": build_id,
                "nodes": [node_view(n) for n in b.nodeset.getNodes()]}

    def release(self, build_id):
        """Executor aborted before useNodeSet: nodes stay ready and are
        only unlocked (Nodepool.unlockNodeSet); the launcher deallocates."""
        with self._lock:
            b = self._builds.pop(build_id, None)
        if b is None:
            raise DriverError("unknown build %s" % build_id)
        self.executor.unlockNodeSet(b.nodeset)
        return {"build": build_id,
                "nodes": [node_view(n) for n in b.nodeset.getNodes()]}

    # ------------------------------------------------------------ bench
    def bench(self, workers=4, duration=20.0, max_requests=100000,
              label="static-label", timeout=60.0, emit=None):
        """N workers, each looping request -> fulfilled -> accept -> in-use
        -> used/return.  Bounded by duration and max_requests."""
        stop_at = time.monotonic() + duration
        lat, npl = [], []
        counts = collections.Counter()
        errors = []
        mu = threading.Lock()
        issued = [0]
        # Every slot in a build right now, keyed as a host sees it: a slot must never be in two
        # builds at once, whatever crashes the launcher goes through.
        busy = {}
        double_booked = []

        def slot_key(node):
            return (node.get("provider"), node.get("hostname") or node.get("interface_ip"),
                    node.get("connection_port"), node.get("slot"))

        def worker(n):
            while time.monotonic() < stop_at:
                with mu:
                    if issued[0] >= max_requests:
                        return
                    issued[0] += 1
                try:
                    rid = self.request([label], job_name="bench-%d" % n)[
                        "request_id"]
                    left = max(1.0, min(timeout,
                                        stop_at - time.monotonic() + timeout))
                    w = self.wait(rid, timeout=left)
                    if w["state"] != model.STATE_FULFILLED:
                        with mu:
                            counts["failed"] += 1
                        continue
                    with mu:
                        counts["fulfilled"] += 1
                        lat.append(w["latency_ms"])
                        if w.get("nodepool_ms") is not None:
                            npl.append(w["nodepool_ms"])
                    accepted = self.accept(rid)
                    b = accepted["build"]
                    keys = [slot_key(node) for node in accepted["nodes"]]
                    with mu:
                        for key, node in zip(keys, accepted["nodes"]):
                            if key in busy:
                                double_booked.append({"slot": list(key), "node": node.get("id"),
                                                      "also": busy[key]})
                            busy[key] = node.get("id")
                    try:
                        self.use(b)
                        self.return_(b)
                    finally:
                        with mu:
                            for key, node in zip(keys, accepted["nodes"]):
                                if busy.get(key) == node.get("id"):
                                    del busy[key]
                    with mu:
                        counts["returned"] += 1
                except Exception as e:  # keep going, report
                    with mu:
                        counts["errors"] += 1
                        if len(errors) < 5:
                            errors.append("%s: %s" % (type(e).__name__, e))

        t_start = time.monotonic()
        threads = [threading.Thread(target=worker, args=(i,), daemon=True)
                   for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(duration + timeout + 60)
        elapsed = time.monotonic() - t_start
        lat.sort()
        npl.sort()
        res = {
            "workers": workers, "duration_s": round(elapsed, 2),
            "label": label, "requests": issued[0],
            "fulfilled": counts["fulfilled"], "failed": counts["failed"],
            "returned": counts["returned"], "errors": counts["errors"],
            "fulfilled_per_s": round(counts["fulfilled"] / elapsed, 3),
            "latency_ms": {
                "p50": percentile(lat, 50), "p99": percentile(lat, 99),
                "min": lat[0] if lat else None,
                "max": lat[-1] if lat else None,
                "mean": round(sum(lat) / len(lat), 2) if lat else None},
            "nodepool_state_time_ms": {
                "p50": percentile(npl, 50), "p99": percentile(npl, 99)},
            "error_samples": errors,
            "double_booked": len(double_booked),
            "double_booked_samples": double_booked[:5],
        }
        return res


# --------------------------------------------------------------------------
# scenarios (against a Nodepool static launcher, see nodepool_static.py)

class ScenarioFailed(Exception):
    pass


def check(cond, msg, **ctx):
    if not cond:
        raise ScenarioFailed("%s %s" % (msg, json.dumps(ctx, default=str)
                                        if ctx else ""))


def sc_happy(d, emit, label, single, timeout):
    r = d.request([label])
    emit("requested", request_id=r["request_id"], span_info=r["span_info"])
    rid = r["request_id"]
    check(rid[3] == "-" and rid.startswith("200-"), "bad request id", id=rid)
    w = d.wait(rid, timeout)
    emit("completed", **w)
    check(w["state"] == "fulfilled", "not fulfilled", state=w["state"])
    check(w["requestor_data_preserved"], "requestor_data not preserved")
    nid = w["nodes"][0]
    raw = d.raw_node(nid)
    check(raw["data"]["state"] == "ready", "node not ready", node=raw)
    check(raw["data"]["allocated_to"] == rid, "allocated_to", node=raw)
    check(not raw["locked"], "fulfilled node still locked", node=raw)
    a = d.accept(rid)
    emit("accepted", **a)
    check(all(n["locked"] and n["state"] == "ready" for n in a["nodes"]),
          "accept: nodes not locked/ready", nodes=a["nodes"])
    check(d.raw_request(rid) is None, "request not deleted by accept")
    check(d.raw_node(nid)["locked"], "no lock contender in ZK")
    d.use(a["build"])
    raw = d.raw_node(nid)
    emit("in-use", state=raw["data"]["state"],
         user_data=raw["data"].get("user_data"))
    check(raw["data"]["state"] == "in-use", "not in-use", node=raw)
    check(raw["data"]["user_data"]["zuul_system"] == d.system_id,
          "user_data")
    old = raw["data"]
    rt = d.return_(a["build"])
    check(all(n["state"] == "used" and not n["locked"]
              for n in rt["nodes"]), "return: not used/unlocked")
    emit("returned", nodes=[n["id"] for n in rt["nodes"]])
    g = d.wait_node_gone(nid, timeout)
    emit("node-deleted", **g)
    if not RECYCLE_CHECK:
        return
    # static driver: the slot is re-registered as a new ready znode
    key = (old.get("hostname"), old.get("connection_port"), old.get("slot"))

    def reregistered(nodes):
        for n in nodes:
            if (n.id != nid and n.state == "ready" and
                    (getattr(n, "hostname", None),
                     getattr(n, "connection_port", None),
                     getattr(n, "slot", None)) == key and
                    getattr(n, "allocated_to", None) is None):
                return n.id
        return None
    new_id = d.wait_nodes(reregistered, timeout)
    emit("node-recycled", old_id=nid, new_id=new_id,
         host=key[0], port=key[1], slot=key[2])


def sc_two_node(d, emit, label, single, timeout):
    r = d.request([label, label], job_name="two-node")
    rid = r["request_id"]
    emit("requested", request_id=rid)
    w = d.wait(rid, timeout)
    emit("completed", **w)
    check(w["state"] == "fulfilled", "not fulfilled", state=w["state"])
    check(len(w["nodes"]) == 2 and len(set(w["nodes"])) == 2,
          "need two distinct nodes", nodes=w["nodes"])
    a = d.accept(rid)
    check([n["id"] for n in a["nodes"]] == w["nodes"], "node order")
    check(len({(n["provider"], n["pool"]) for n in a["nodes"]}) == 1,
          "nodes from different provider/pool")
    emit("accepted", nodes=[n["id"] for n in a["nodes"]])
    d.use(a["build"])
    d.return_(a["build"])
    for nid in w["nodes"]:
        emit("node-deleted", **d.wait_node_gone(nid, timeout))


def sc_unknown_label(d, emit, label, single, timeout):
    r = d.request(["no-such-label"], job_name="unknown-label")
    rid = r["request_id"]
    emit("requested", request_id=rid)
    w = d.wait(rid, timeout)
    emit("completed", **w)
    check(w["state"] == "failed", "expected failed", state=w["state"])
    check(len(w["declined_by"]) >= 1, "declined_by empty")
    check(w.get("deleted") and d.raw_request(rid) is None,
          "failed request not deleted by scheduler")


def _occupy(d, emit, single, timeout):
    """Accept the single node of ``single`` so further requests wait."""
    r = d.request([single], job_name="blocker")
    w = d.wait(r["request_id"], timeout)
    check(w["state"] == "fulfilled", "blocker not fulfilled", w=w)
    a = d.accept(r["request_id"])
    emit("blocker-accepted", build=a["build"],
         node=a["nodes"][0]["id"])
    return a


def sc_cancel(d, emit, label, single, timeout):
    blocker = _occupy(d, emit, single, timeout)
    r = d.request([single], job_name="to-cancel")
    rid = r["request_id"]
    emit("requested", request_id=rid)
    time.sleep(3)   # several launcher loops (1 s watermark)
    raw = d.raw_request(rid)
    check(raw and raw["data"]["state"] == "requested",
          "request should still be waiting", raw=raw)
    check(raw["data"].get("declined_by", []) == [], "declined", raw=raw)
    emit("waiting", state=raw["data"]["state"],
         declined_by=raw["data"].get("declined_by", []))
    c = d.cancel(rid)
    emit("canceled", **c)
    check(c["canceled"] and c["cache_state_at_delete"] == "requested",
          "cancel / deletion event", c=c)
    time.sleep(2)
    check(d.raw_request(rid) is None, "request re-created after cancel")
    d.use(blocker["build"])
    d.return_(blocker["build"])
    bn = blocker["nodes"][0]["id"]
    d.wait_node_gone(bn, timeout)
    # the launcher is not wedged by the withdrawn request
    r2 = d.request([single], job_name="after-cancel")
    w2 = d.wait(r2["request_id"], timeout)
    check(w2["state"] == "fulfilled", "follow-up not fulfilled", w=w2)
    a2 = d.accept(r2["request_id"])
    d.use(a2["build"])
    d.return_(a2["build"])
    emit("follow-up-fulfilled", request_id=r2["request_id"],
         latency_ms=w2["latency_ms"])
    d.wait_node_gone(a2["nodes"][0]["id"], timeout)


def sc_revise(d, emit, label, single, timeout):
    blocker = _occupy(d, emit, single, timeout)
    ra = d.request([single], relative_priority=5, job_name="rel-5")
    rb = d.request([single], relative_priority=6, job_name="rel-6")
    emit("requested", a=ra["request_id"], b=rb["request_id"])
    time.sleep(3)
    rv = d.revise(rb["request_id"], 0)
    emit("revised", **rv)
    check(rv["outcome"] == "revised", "revise failed", rv=rv)
    # now B (newer, rel-prio 0) must be served before A (rel-prio 5)
    d.use(blocker["build"])
    d.return_(blocker["build"])
    wb = d.wait(rb["request_id"], timeout)
    check(wb["state"] == "fulfilled", "B not fulfilled", w=wb)
    raw_a = d.raw_request(ra["request_id"])
    check(raw_a and raw_a["data"]["state"] == "requested",
          "A served before B", a=raw_a)
    emit("b-first", request_id=rb["request_id"],
         a_state=raw_a["data"]["state"])
    ab = d.accept(rb["request_id"])
    d.use(ab["build"])
    d.return_(ab["build"])
    wa = d.wait(ra["request_id"], timeout)
    check(wa["state"] == "fulfilled", "A not fulfilled", w=wa)
    aa = d.accept(ra["request_id"])
    d.use(aa["build"])
    d.return_(aa["build"])
    emit("a-second", request_id=ra["request_id"])
    d.wait_node_gone(aa["nodes"][0]["id"], timeout)


def sc_autohold(d, emit, label, single, timeout):
    h = d.autohold("held-job", reason="scenario autohold", count=1,
                   node_expiration=3600)
    hid = h["hold_request_id"]
    emit("autohold-created", hold_request_id=hid)
    r = d.request([label], job_name="held-job")
    w = d.wait(r["request_id"], timeout)
    check(w["state"] == "fulfilled", "not fulfilled", w=w)
    a = d.accept(r["request_id"])
    nid = a["nodes"][0]["id"]
    d.use(a["build"])
    d.hold(a["build"], hid)          # build "failed" and matched autohold
    d.return_(a["build"])            # executor unlocks at build end
    raw = d.raw_node(nid)
    nd = raw["data"]
    emit("held", node=nid, state=nd["state"], hold_job=nd.get("hold_job"),
         comment=nd.get("comment"), hold_expiration=nd.get("hold_expiration"),
         locked=raw["locked"])
    check(nd["state"] == "hold" and not raw["locked"], "not held/unlocked",
          raw=raw)
    check(nd["hold_job"] == "%s %s held-job .*" % (d.tenant, d.project),
          "hold_job", raw=raw)
    check(nd["hold_expiration"] == 3600, "hold_expiration", raw=raw)
    info = d.autohold_info(hid)
    check(info["current_count"] == 1 and info["expired"] and
          info["nodes"][0]["nodes"] == [nid], "hold request", info=info)
    time.sleep(7)    # > DeletedNodeWorker interval (5 s)
    raw = d.raw_node(nid)
    check(raw and raw["data"]["state"] == "hold", "held node reaped",
          raw=raw)
    emit("still-held-after-7s", node=nid)
    rel = d.autohold_delete(hid)
    emit("autohold-deleted", **rel)
    check(rel["deleted"], "hold request not deleted", rel=rel)
    g = d.wait_node_gone(nid, timeout)
    emit("node-deleted", **g)


RECYCLE_CHECK = True     # --no-recycle-check clears it (non-static pools)
NEEDS_SINGLE = {"cancel", "revise"}

SCENARIOS = collections.OrderedDict([
    ("happy", sc_happy),
    ("two-node", sc_two_node),
    ("unknown-label", sc_unknown_label),
    ("cancel", sc_cancel),
    ("revise", sc_revise),
    ("autohold", sc_autohold),
])


def run_scenarios(d, names, label, single, timeout, out):
    ok = True
    for name in names:
        def emit(step, **kw):
            out({"scenario": name, "step": step, "data": kw})
        t0 = time.monotonic()
        try:
            SCENARIOS[name](d, emit, label, single, timeout)
            out({"scenario": name, "result": "pass",
                 "elapsed_s": round(time.monotonic() - t0, 2)})
        except Exception as e:
            ok = False
            out({"scenario": name, "result": "fail",
                 "error": "%s: %s" % (type(e).__name__, e),
                 "traceback": traceback.format_exc(limit=5)})
    return ok


# --------------------------------------------------------------------------
# JSON-lines server (stdin -> stdout)

def serve(d, out, infile=sys.stdin):
    ops = {
        "request": lambda a: d.request(
            a["labels"], priority=a.get("priority", 200),
            relative_priority=a.get("relative_priority", 0),
            provider=a.get("provider"), job_name=a.get("job", "test-job"),
            tenant=a.get("tenant"), pipeline=a.get("pipeline")),
        "wait": lambda a: d.wait(a["request_id"], a.get("timeout", 60)),
        "accept": lambda a: d.accept(a["request_id"]),
        "use": lambda a: d.use(a["build"], project=a.get("project")),
        "return": lambda a: d.return_(a["build"], project=a.get("project")),
        "release": lambda a: d.release(a["build"]),
        "hold": lambda a: d.hold(a["build"], a["hold_request_id"]),
        "autohold": lambda a: d.autohold(
            a["job"], reason=a.get("reason", "zuul_driver"),
            count=a.get("count", 1),
            node_expiration=a.get("node_expiration"),
            ref_filter=a.get("ref_filter", ".*")),
        "autohold_info": lambda a: d.autohold_info(a["hold_request_id"]),
        "autohold_delete": lambda a: d.autohold_delete(a["hold_request_id"]),
        "cancel": lambda a: d.cancel(a["request_id"], a.get("timeout", 10)),
        "revise": lambda a: d.revise(a["request_id"],
                                     a["relative_priority"]),
        "get_request": lambda a: d.raw_request(a["request_id"]),
        "get_node": lambda a: d.raw_node(a["node_id"]),
        "wait_node_gone": lambda a: d.wait_node_gone(
            a["node_id"], a.get("timeout", 30)),
        "launchers": lambda a: {"pools": d.launchers()},
        "wait_launcher": lambda a: d.wait_launcher(
            a.get("labels", []), a.get("timeout", 60)),
        "scenario": lambda a: {"pass": run_scenarios(
            d, [a["name"]], a.get("label", "static-label"),
            a.get("single_label", "static-single"), a.get("timeout", 60),
            out)},
        "bench": lambda a: d.bench(
            a.get("workers", 4), a.get("duration", 20),
            a.get("max_requests", 100000), a.get("label", "static-label"),
            a.get("timeout", 60)),
    }
    for line in infile:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError as e:
            out({"id": None, "ok": False, "error_type": "BadJson",
                 "error": str(e)})
            continue
        mid = msg.get("id")
        op = msg.get("op")
        if op == "quit":
            out({"id": mid, "ok": True, "result": {"bye": True}})
            return
        fn = ops.get(op)
        if fn is None:
            out({"id": mid, "ok": False, "error_type": "UnknownOp",
                 "error": "unknown op %r (known: %s)" %
                          (op, ", ".join(sorted(ops) + ["quit"]))})
            continue
        try:
            out({"id": mid, "ok": True, "result": fn(msg)})
        except Exception as e:
            log.debug("op %s failed", op, exc_info=True)
            out({"id": mid, "ok": False, "error_type": type(e).__name__,
                 "error": str(e)})


# --------------------------------------------------------------------------
# CLI

def make_out():
    lock = threading.Lock()

    def out(obj):
        line = json.dumps(obj, default=str)
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Zuul 14.3.0 scheduler+executor node-request driver "
                    "(JSON lines on stdout).")
    p.add_argument("--testenv-json",
                   help="JSON printed by 'nodepool-testenv up' (file or -)")
    p.add_argument("--hosts", help="ZooKeeper host:port[,host:port]")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--chroot", required=True,
                   help="ZooKeeper chroot shared with the launcher "
                        "(created if missing)")
    p.add_argument("--session-timeout", type=float, default=120.0,
                   help="ZK session timeout (Zuul's code default 120 s)")
    p.add_argument("--tenant", default="tenant-one")
    p.add_argument("--pipeline", default="check")
    p.add_argument("--project", default="review.example.com/org/project")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--no-election", action="store_true",
                   help="take completion events straight from the request "
                        "cache instead of via /zuul/nodepool/election "
                        "(needed when several driver processes share one "
                        "chroot: only one can win the election)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve", help="JSON commands on stdin, one per line")
    s = sub.add_parser("run-scenario")
    s.add_argument("name", choices=list(SCENARIOS) + ["all"])
    s.add_argument("--label", default="static-label")
    s.add_argument("--single-label", default="static-single")
    s.add_argument("--timeout", type=float, default=60.0)
    s.add_argument("--no-recycle-check", action="store_true",
                   help="happy: don't expect the static driver to "
                        "re-register the slot as a new ready node")
    b = sub.add_parser("bench")
    b.add_argument("--workers", type=int, default=4)
    b.add_argument("--duration", type=float, default=20.0)
    b.add_argument("--max-requests", type=int, default=100000)
    b.add_argument("--label", default="static-label")
    b.add_argument("--timeout", type=float, default=60.0)
    w = sub.add_parser("wait-launcher")
    w.add_argument("--labels", default="")
    w.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)

    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: "
                               "%(message)s")
    if args.testenv_json:
        if args.testenv_json == "-":
            te = json.load(sys.stdin)
        else:
            with open(args.testenv_json) as f:
                te = json.load(f)
        zk = te["zookeeper"]
        args.hosts = args.hosts or zk["hosts"]
        args.ca = args.ca or zk["tls_ca"]
        args.cert = args.cert or zk["tls_cert"]
        args.key = args.key or zk["tls_key"]
    if not all([args.hosts, args.ca, args.cert, args.key]):
        p.error("need --hosts/--ca/--cert/--key or --testenv-json")
    if args.cmd == "serve" and args.testenv_json == "-":
        p.error("serve reads commands from stdin; pass --testenv-json FILE")

    out = make_out()
    d = ZuulDriver(args.hosts, args.ca, args.cert, args.key, args.chroot,
                   session_timeout=args.session_timeout, tenant=args.tenant,
                   pipeline=args.pipeline, project=args.project,
                   use_election=not args.no_election)
    import zuul.version
    out({"event": "ready", "system_id": d.system_id, "chroot": d.chroot,
         "zuul": zuul.version.release_string})
    rc = 0
    try:
        if args.cmd == "serve":
            serve(d, out)
        elif args.cmd == "run-scenario":
            global RECYCLE_CHECK
            RECYCLE_CHECK = not args.no_recycle_check
            names = list(SCENARIOS) if args.name == "all" else [args.name]
            need = [args.label]
            if NEEDS_SINGLE & set(names):
                need.append(args.single_label)
            d.wait_launcher(need, args.timeout)
            rc = 0 if run_scenarios(d, names, args.label, args.single_label,
                                    args.timeout, out) else 1
        elif args.cmd == "bench":
            d.wait_launcher([args.label], args.timeout)
            out({"bench": d.bench(args.workers, args.duration,
                                  args.max_requests, args.label,
                                  args.timeout)})
        elif args.cmd == "wait-launcher":
            labels = [x for x in args.labels.split(",") if x]
            out(d.wait_launcher(labels, args.timeout))
    finally:
        d.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
