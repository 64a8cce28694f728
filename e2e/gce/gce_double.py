#!/usr/bin/env python3
"""A test double of the Google Compute Engine v1 REST API (JSON transport).

Written for testing a GCE driver that uses the Rust crates
`google-cloud-compute-v1` 4.1 and `google-cloud-auth` 1.18 against a local
server. Python 3.11 standard library only; `openssl` (the command) generates
service-account keys. See README.md next to this file for what it covers.

Run:  python3 gce_double.py --port 0 --port-file /tmp/gce.port

Three kinds of endpoints:
  /compute/v1/projects/{project}/...   the Compute Engine API subset
  /token                               OAuth2 JWT-bearer token endpoint
  /double/...                          control endpoints for tests (no auth)
"""

from __future__ import annotations

import argparse
import base64
import collections
import copy
import datetime
import fnmatch
import hashlib
import http.server
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

SELF_LINK_BASE = "https://www.googleapis.com/compute/v1"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
ACCEPTED_SCOPES = {
    CLOUD_PLATFORM_SCOPE,
    "https://www.googleapis.com/auth/compute",
}
ACCEPTED_AUDIENCES = {
    "https://compute.googleapis.com/",
    "https://compute.googleapis.com",
}
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_CLOCK_SKEW = 300  # seconds of skew tolerated on iat/exp
JWT_MAX_LIFETIME = 3600 + 120  # the Rust client signs exp - iat = 3620 s

# Region -> zones known to the double (more can be added via /double/config).
DEFAULT_ZONES = {
    "us-central1": ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"],
    "us-east1": ["us-east1-b", "us-east1-c", "us-east1-d"],
    "us-west1": ["us-west1-a", "us-west1-b", "us-west1-c"],
    "europe-west1": ["europe-west1-b", "europe-west1-c", "europe-west1-d"],
    "europe-west4": ["europe-west4-a", "europe-west4-b", "europe-west4-c"],
    "asia-east1": ["asia-east1-a", "asia-east1-b", "asia-east1-c"],
}
# Default VPC subnet of each region (auto-mode "default" network ranges).
REGION_SUBNETS = {
    "us-central1": (10, 128),
    "us-east1": (10, 142),
    "us-west1": (10, 138),
    "europe-west1": (10, 132),
    "europe-west4": (10, 164),
    "asia-east1": (10, 140),
}

# name -> (guestCpus, memoryMb, isSharedCpu, description, id). Values as the
# real machineTypes.get returns them.
MACHINE_TYPES = {
    "e2-micro": (2, 1024, True, "Efficient Instance, 2 vCPU (1/8 shared physical core) and 1 GB RAM", "334000"),
    "e2-small": (2, 2048, True, "Efficient Instance, 2 vCPU (1/4 shared physical core) and 2 GB RAM", "334001"),
    "e2-medium": (2, 4096, True, "Efficient Instance, 2 vCPU (1/2 shared physical core) and 4 GB RAM", "334002"),
    "e2-standard-2": (2, 8192, False, "Efficient Instance, 2 vCPUs, 8 GB RAM", "335002"),
    "e2-standard-4": (4, 16384, False, "Efficient Instance, 4 vCPUs, 16 GB RAM", "335004"),
    "e2-standard-8": (8, 32768, False, "Efficient Instance, 8 vCPUs, 32 GB RAM", "335008"),
    "n1-standard-1": (1, 3840, False, "1 vCPU, 3.75 GB RAM", "3001"),
    "n1-standard-2": (2, 7680, False, "2 vCPUs, 7.5 GB RAM", "3002"),
    "n1-standard-4": (4, 15360, False, "4 vCPUs, 15 GB RAM", "3004"),
    "n2-standard-2": (2, 8192, False, "2 vCPUs 8 GB RAM", "901002"),
    "n2-standard-4": (4, 16384, False, "4 vCPUs 16 GB RAM", "901004"),
    "n2-standard-8": (8, 32768, False, "8 vCPUs 32 GB RAM", "901008"),
    "n2-highmem-2": (2, 16384, False, "2 vCPUs 16 GB RAM", "902002"),
}

# Regional CPU quota metric by machine family. E2, N1 and the shared-core
# f1/g1 draw on CPUS; N2 has its own N2_CPUS quota, as in real GCE.
FAMILY_CPU_METRIC = {"e2": "CPUS", "n1": "CPUS", "f1": "CPUS", "g1": "CPUS", "n2": "N2_CPUS"}
QUOTA_INFO = {
    "CPUS": ("compute.googleapis.com/cpus", "CPUS-per-project-region"),
    "N2_CPUS": ("compute.googleapis.com/n2_cpus", "N2-CPUS-per-project-region"),
    "INSTANCES": ("compute.googleapis.com/instances", "INSTANCES-per-project-region"),
}
DEFAULT_QUOTAS = {
    "CPUS": 24.0,
    "N2_CPUS": 24.0,
    "INSTANCES": 100.0,
    "DISKS_TOTAL_GB": 4096.0,
    "SSD_TOTAL_GB": 500.0,
    "IN_USE_ADDRESSES": 8.0,
    "PREEMPTIBLE_CPUS": 0.0,
}
ENFORCED_QUOTAS = ("CPUS", "N2_CPUS", "INSTANCES")
# Statuses whose vCPUs count against the CPU quotas (TERMINATED/STOPPED don't).
CPU_COUNTING_STATUSES = {"PROVISIONING", "STAGING", "RUNNING", "STOPPING", "REPAIRING", "SUSPENDING"}

HTTP_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}
HTTP_ERROR_MESSAGES = {
    400: "BAD REQUEST",
    403: "FORBIDDEN",
    404: "NOT FOUND",
    409: "CONFLICT",
    412: "PRECONDITION FAILED",
    429: "TOO MANY REQUESTS",
    500: "INTERNAL SERVER ERROR",
    503: "SERVICE UNAVAILABLE",
}

NAME_RE = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
METADATA_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def log(msg: str) -> None:
    sys.stderr.write(f"[gce-double {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

try:  # Real GCE writes timestamps in US Pacific time with an offset.
    from zoneinfo import ZoneInfo

    _PACIFIC = ZoneInfo("America/Los_Angeles")
except Exception:  # pragma: no cover - no tz database
    _PACIFIC = datetime.timezone.utc


def rfc3339(wall: float) -> str:
    """RFC 3339 with milliseconds and a numeric offset, like real GCE."""
    dt = datetime.datetime.fromtimestamp(wall, _PACIFIC)
    s = dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}"
    off = dt.strftime("%z") or "+0000"
    return f"{s}{off[:3]}:{off[3:]}"


def parse_rfc3339(s: str) -> float:
    try:
        return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except Exception:
        return 0.0


def new_id() -> str:
    """uint64 resource ids are sent as decimal strings."""
    return str(random.randrange(10**18, 2**63 - 1))


def new_operation_name() -> str:
    return (
        f"operation-{int(time.time() * 1000)}-{secrets.token_hex(7)[:13]}"
        f"-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
    )


def fingerprint() -> str:
    # URL-safe: google-cloud-compute-v1 decodes `format: byte` fields with serde_with's
    # Base64<UrlSafe>, so '+' or '/' in a fingerprint would make every answer unreadable.
    return base64.urlsafe_b64encode(secrets.token_bytes(8)).decode()


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def last_segment(url_or_path: str) -> str:
    return url_or_path.rstrip("/").rsplit("/", 1)[-1]


def region_of_zone(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def project_number(project: str) -> str:
    return str(100000000000 + int(hashlib.sha256(project.encode()).hexdigest(), 16) % 899999999999)


def int64_str(v) -> str | None:
    """int64 fields arrive as strings from the Rust client (wkt::internal::I64)."""
    if v is None:
        return None
    return str(int(v))


class ApiError(Exception):
    """An HTTP error in the shape Compute Engine returns it."""

    def __init__(self, code: int, reason: str, message: str, *, domain: str = "global",
                 extra: dict | None = None, headers: dict | None = None, debug: str | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.domain = domain
        self.extra = extra or {}
        self.headers = headers or {}
        self.debug = debug

    def body(self) -> dict:
        item = {"message": self.message, "domain": self.domain, "reason": self.reason}
        item.update(self.extra)
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [item],
                "status": HTTP_STATUS_NAMES.get(self.code, "UNKNOWN"),
            }
        }


def not_found(resource: str) -> ApiError:
    return ApiError(404, "notFound", f"The resource '{resource}' was not found")


def invalid(field: str, value, detail: str) -> ApiError:
    return ApiError(400, "invalid", f"Invalid value for field '{field}': '{value}'. {detail}")


# --------------------------------------------------------------------------
# RSA keys (openssl) and RS256 verification (pure Python)
# --------------------------------------------------------------------------

# DER prefix of DigestInfo for SHA-256 (RFC 8017, section 9.2, note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def generate_rsa_key(bits: int = 2048) -> tuple[str, int, int]:
    """Returns (PKCS#8 PEM, modulus, public exponent) of a new RSA key."""
    pem = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}"],
        check=True, capture_output=True, text=True,
    ).stdout
    n, e = rsa_public_numbers(pem)
    return pem, n, e


def rsa_public_numbers(pem: str) -> tuple[int, int]:
    text = subprocess.run(
        ["openssl", "pkey", "-noout", "-text"], input=pem,
        check=True, capture_output=True, text=True,
    ).stdout
    m = re.search(r"modulus:\s*\n((?:\s+[0-9a-f:]+\n)+)", text)
    e = re.search(r"publicExponent:\s*(\d+)", text)
    if not m or not e:
        raise RuntimeError("cannot parse openssl key text")
    n = int(re.sub(r"[^0-9a-f]", "", m.group(1)), 16)
    return n, int(e.group(1))


def rs256_verify(n: int, e: int, signing_input: bytes, signature: bytes) -> bool:
    k = (n.bit_length() + 7) // 8
    if len(signature) != k:
        return False
    s = int.from_bytes(signature, "big")
    if s >= n:
        return False
    em = pow(s, e, n).to_bytes(k, "big")
    t = _SHA256_DIGEST_INFO + hashlib.sha256(signing_input).digest()
    if k < len(t) + 11:
        return False
    expected = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
    return secrets.compare_digest(em, expected)


class JwtError(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # "signature" | "account" | "time" | "format" | "scope"
        self.detail = detail


# --------------------------------------------------------------------------
# List filters: a subset of the Compute Engine filter language
# --------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<lp>\()|(?P<rp>\))|
        (?P<op>!=|<=|>=|=|:|<|>)|
        "(?P<dq>(?:[^"\\]|\\.)*)"|
        '(?P<sq>(?:[^'\\]|\\.)*)'|
        (?P<word>[^\s()=!:<>"']+)
    )""",
    re.VERBOSE,
)


class FilterError(Exception):
    pass


def _tokenize(expr: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if not m or m.end() == pos:
            raise FilterError(f"unexpected character at {pos}")
        pos = m.end()
        kind = m.lastgroup
        val = m.group(kind)
        if kind in ("dq", "sq"):
            out.append(("str", re.sub(r"\\(.)", r"\1", val)))
        elif kind == "word":
            out.append(("word", val))
        else:
            out.append((kind, val))
        # trailing whitespace is consumed by the next match
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return out


class Filter:
    """field OP value terms, AND / OR / NOT, parentheses, implicit AND.

    OP: = != (exact, `*` wildcards allowed), `:` (has; `:*` = present),
    eq / ne (RE2-style regular expression, full match), < <= > >=.
    Fields are dotted paths into the resource JSON (labels.env, name, status,
    scheduling.preemptible, ...).
    """

    def __init__(self, expr: str):
        self.expr = expr
        self.toks = _tokenize(expr)
        self.i = 0
        self.tree = self._or() if self.toks else ("true",)
        if self.i != len(self.toks):
            raise FilterError("trailing tokens")

    def _peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def _next(self):
        t = self._peek()
        if t[0] is None:
            raise FilterError("unexpected end")
        self.i += 1
        return t

    def _or(self):
        node = self._and()
        while self._peek() == ("word", "OR"):
            self.i += 1
            node = ("or", node, self._and())
        return node

    def _and(self):
        node = self._unary()
        while True:
            t = self._peek()
            if t == ("word", "AND"):
                self.i += 1
                node = ("and", node, self._unary())
            elif t[0] in ("lp", "word", "str") and t != ("word", "OR"):
                node = ("and", node, self._unary())
            else:
                return node

    def _unary(self):
        t = self._peek()
        if t == ("word", "NOT"):
            self.i += 1
            return ("not", self._unary())
        if t[0] == "lp":
            self.i += 1
            node = self._or()
            if self._next()[0] != "rp":
                raise FilterError("missing )")
            return node
        return self._term()

    def _term(self):
        kind, field = self._next()
        if kind != "word":
            raise FilterError("expected field name")
        kind, op = self._next()
        if kind == "word" and op in ("eq", "ne"):
            pass
        elif kind != "op":
            raise FilterError("expected operator")
        kind, value = self._next()
        if kind not in ("word", "str"):
            raise FilterError("expected value")
        if op in ("eq", "ne"):
            try:
                re.compile(value)
            except re.error as e:
                raise FilterError(f"bad regex: {e}") from None
        return ("cmp", field, op, value)

    @staticmethod
    def _lookup(obj, path: str):
        cur = obj
        for part in path.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                return None
        return cur

    @staticmethod
    def _str(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    def _eval(self, node, obj) -> bool:
        tag = node[0]
        if tag == "true":
            return True
        if tag == "and":
            return self._eval(node[1], obj) and self._eval(node[2], obj)
        if tag == "or":
            return self._eval(node[1], obj) or self._eval(node[2], obj)
        if tag == "not":
            return not self._eval(node[1], obj)
        _, field, op, value = node
        v = self._lookup(obj, field)
        if op == ":":
            if value == "*":
                return v is not None
            if isinstance(v, list):
                return any(self._str(x) == value for x in v)
            return v is not None and value.lower() in self._str(v).lower()
        if op in ("eq", "ne"):
            hit = v is not None and re.fullmatch(value, self._str(v)) is not None
            return hit if op == "eq" else not hit
        if op in ("=", "!="):
            if v is None:
                hit = False
            elif isinstance(v, (str, bool, int, float)):
                s = self._str(v)
                # URL-valued fields (zone, machineType) also match on the last segment.
                hit = fnmatch.fnmatchcase(s, value) or (
                    "/" in s and fnmatch.fnmatchcase(last_segment(s), value))
            else:
                hit = False
            return hit if op == "=" else not hit
        if v is None:
            return False
        try:
            a, b = float(v), float(value)
        except (TypeError, ValueError):
            a, b = self._str(v), value
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]

    def matches(self, obj) -> bool:
        return self._eval(self.tree, obj)


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------

def default_config() -> dict:
    return {
        # Seconds from insert until RUNNING (PROVISIONING for the first third,
        # then STAGING). The insert operation is DONE when RUNNING.
        "bootDelay": 2.0,
        # Seconds an instance stays STOPPING after delete before it is gone.
        "deleteDelay": 1.0,
        # Seconds a failing insert operation (quota, capacity) stays RUNNING.
        "failDelay": 0.5,
        # Longest time operations.wait blocks (real GCE: about 2 minutes).
        "waitTimeout": 120.0,
        # "operation": quota errors end the insert operation DONE with
        # QUOTA_EXCEEDED (what GCE does for regional CPU quota);
        # "http": the insert call itself fails with 403 quotaExceeded.
        "quotaErrorMode": "operation",
        # Authentication required on /compute/...
        "requireAuth": True,
        # IP addresses. Fixed values override allocation for every instance.
        "natIpFixed": None,
        "natIpBase": "127.1.0.0",  # external IPs are allocated on loopback
        "networkIpFixed": None,
        # Deletion of a boot disk with autoDelete=false leaves the disk behind
        # (listed under /double/state "disks"), as in GCE.
    }


class State:
    def __init__(self, require_auth: bool = True):
        self.cond = threading.Condition()
        self.service_accounts: dict[str, dict] = {}  # email -> record
        self.keys: dict[str, dict] = {}  # kid -> {email, n, e}
        self.access_tokens: dict[str, dict] = {}  # token -> {email, expires}
        self.static_tokens: dict[str, str] = {}  # token -> principal
        self.request_log: collections.deque = collections.deque(maxlen=5000)
        self._require_auth_default = require_auth
        self.reset()

    # -- lifecycle ---------------------------------------------------------

    def reset(self, service_accounts: bool = False) -> None:
        with self.cond:
            self.config = default_config()
            self.config["requireAuth"] = self._require_auth_default
            self.zones = {r: list(z) for r, z in DEFAULT_ZONES.items()}
            self.instances: dict[tuple, dict] = {}  # (project, zone, name)
            self.operations: dict[tuple, dict] = {}  # (project, zone, name)
            self.disks: dict[tuple, dict] = {}  # (project, zone, name)
            self.images: dict[tuple, dict] = {}  # (project, name)
            self.quotas: dict[str, dict] = {}  # "project/region" or "*/region" or "*/*"
            self.capacity: dict[str, dict] = {}  # zone -> {...}
            self.fail_next: list[dict] = []
            self.request_ids: dict[tuple, str] = {}  # (project, zone, requestId) -> op name
            self.ip_counters: dict[tuple, int] = {}
            self.nat_counter = 0
            self.request_log.clear()
            if service_accounts:
                self.service_accounts.clear()
                self.keys.clear()
                self.access_tokens.clear()
            self._seed_images()
            self.cond.notify_all()

    def _seed_images(self) -> None:
        day = 86400.0
        now = time.time()
        seeds = [
            ("debian-cloud", "debian-12-bookworm-v20240910", "debian-12", now - 60 * day, None),
            ("debian-cloud", "debian-12-bookworm-v20241009", "debian-12", now - 30 * day, None),
            ("debian-cloud", "debian-11-bullseye-v20241009", "debian-11", now - 30 * day, None),
            ("ubuntu-os-cloud", "ubuntu-2204-jammy-v20241001", "ubuntu-2204-lts", now - 35 * day, None),
            ("ubuntu-os-cloud", "ubuntu-2404-noble-amd64-v20241004", "ubuntu-2404-lts-amd64", now - 32 * day, None),
        ]
        for project, name, family, created, dep in seeds:
            self.add_image({"project": project, "name": name, "family": family,
                            "creationWall": created, "deprecated": dep})

    # -- helpers -----------------------------------------------------------

    def zone_known(self, zone: str) -> bool:
        return any(zone in zs for zs in self.zones.values())

    def region_known(self, region: str) -> bool:
        return region in self.zones

    def check_zone(self, project: str, zone: str) -> None:
        if not self.zone_known(zone):
            raise not_found(f"projects/{project}/zones/{zone}")

    def advance(self) -> None:
        """Applies time-based transitions. Caller holds the lock."""
        now = time.monotonic()
        for key, inst in list(self.instances.items()):
            if inst["deleteAt"] is not None and now >= inst["deleteAt"]:
                del self.instances[key]
                disk = inst["bootDisk"]
                dkey = (inst["project"], inst["zone"], disk["name"])
                if disk["autoDelete"]:
                    self.disks.pop(dkey, None)
                elif dkey in self.disks:
                    self.disks[dkey]["users"] = []

    def instance_status(self, inst: dict, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        if inst["forcedStatus"]:
            return inst["forcedStatus"]
        if inst["deleteAt"] is not None:
            return "STOPPING"
        delay = inst["bootDelay"]
        if now >= inst["t0"] + delay:
            return "RUNNING"
        if now >= inst["t0"] + delay / 3.0:
            return "STAGING"
        return "PROVISIONING"

    def render_instance(self, inst: dict) -> dict:
        now = time.monotonic()
        res = copy.deepcopy(inst["resource"])
        status = self.instance_status(inst, now)
        res["status"] = status
        if status == "RUNNING" or inst.get("everRunning"):
            inst["everRunning"] = True
            res["lastStartTimestamp"] = rfc3339(inst["wall0"] + inst["bootDelay"])
        if inst["deleteAt"] is not None:
            res["lastStopTimestamp"] = rfc3339(inst["deleteWall"])
        return res

    def op_status(self, op: dict, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        if now >= op["tDone"]:
            return "DONE"
        if now >= op["tStart"]:
            return "RUNNING"
        return "PENDING"

    def render_op(self, op: dict) -> dict:
        now = time.monotonic()
        status = self.op_status(op, now)

        def wall(t):
            return rfc3339(op["wall"] + (t - op["tInsert"]))

        res = {
            "kind": "compute#operation",
            "id": op["id"],
            "name": op["name"],
            "zone": f"{SELF_LINK_BASE}/projects/{op['project']}/zones/{op['zone']}",
            "operationType": op["type"],
            "targetLink": op["targetLink"],
            "targetId": op["targetId"],
            "status": status,
            "user": op["user"],
            "progress": 100 if status == "DONE" else 0,
            "insertTime": wall(op["tInsert"]),
            "selfLink": f"{SELF_LINK_BASE}/projects/{op['project']}/zones/{op['zone']}/operations/{op['name']}",
        }
        if status != "PENDING":
            res["startTime"] = wall(op["tStart"])
        if status == "DONE":
            res["endTime"] = wall(op["tDone"])
            if op["error"]:
                res["error"] = op["error"]
                res["httpErrorStatusCode"] = op["httpErrorStatusCode"]
                res["httpErrorMessage"] = HTTP_ERROR_MESSAGES.get(op["httpErrorStatusCode"], "ERROR")
        return res

    def new_op(self, project: str, zone: str, optype: str, target_link: str, target_id: str,
               user: str, duration: float, error: dict | None = None, http_code: int | None = None) -> dict:
        t = time.monotonic()
        pending = min(0.2, duration / 4.0)
        op = {
            "project": project, "zone": zone, "name": new_operation_name(), "id": new_id(),
            "type": optype, "targetLink": target_link, "targetId": target_id, "user": user,
            "wall": time.time(), "tInsert": t, "tStart": t + pending, "tDone": t + duration,
            "error": error, "httpErrorStatusCode": http_code,
        }
        self.operations[(project, zone, op["name"])] = op
        return op

    # -- quota -------------------------------------------------------------

    def quota_limits(self, project: str, region: str) -> dict:
        limits = dict(DEFAULT_QUOTAS)
        for key in ("*/*", f"*/{region}", f"{project}/*", f"{project}/{region}"):
            limits.update(self.quotas.get(key, {}))
        return limits

    def quota_usage(self, project: str, region: str) -> dict:
        usage = {k: 0.0 for k in DEFAULT_QUOTAS}
        now = time.monotonic()
        for inst in self.instances.values():
            if inst["project"] != project or region_of_zone(inst["zone"]) != region:
                continue
            usage["INSTANCES"] += 1
            if self.instance_status(inst, now) in CPU_COUNTING_STATUSES:
                usage[inst["cpuMetric"]] += inst["cpus"]
            disk = inst["bootDisk"]
            if disk["type"] in ("pd-ssd", "pd-balanced"):
                usage["SSD_TOTAL_GB"] += disk["sizeGb"]
            else:
                usage["DISKS_TOTAL_GB"] += disk["sizeGb"]
            if inst["hasExternalIp"]:
                usage["IN_USE_ADDRESSES"] += 1
        return usage

    # -- images ------------------------------------------------------------

    def add_image(self, spec: dict) -> dict:
        project = spec["project"]
        name = spec["name"]
        created = spec.get("creationWall")
        if created is None and spec.get("creationTimestamp"):
            created = parse_rfc3339(spec["creationTimestamp"])
        if created is None:
            created = time.time()
        size = int(spec.get("diskSizeGb", 10))
        img = {
            "kind": "compute#image",
            "id": new_id(),
            "creationTimestamp": rfc3339(created),
            "name": name,
            "description": spec.get("description", name),
            "sourceType": "RAW",
            "rawDisk": {"source": "", "containerType": "TAR"},
            "status": spec.get("status", "READY"),
            "archiveSizeBytes": str(size * 110_000_000),
            "diskSizeGb": str(size),
            "licenses": [f"{SELF_LINK_BASE}/projects/{project}/global/licenses/{spec.get('family') or name}"],
            "selfLink": f"{SELF_LINK_BASE}/projects/{project}/global/images/{name}",
            "labelFingerprint": "42WmSpB8rSM=",
            "guestOsFeatures": [{"type": "UEFI_COMPATIBLE"}, {"type": "VIRTIO_SCSI_MULTIQUEUE"},
                                {"type": "GVNIC"}, {"type": "SEV_CAPABLE"}],
            "storageLocations": ["eu", "asia", "us"],
            "architecture": spec.get("architecture", "X86_64"),
        }
        if spec.get("family"):
            img["family"] = spec["family"]
        if spec.get("labels"):
            img["labels"] = dict(spec["labels"])
        dep = spec.get("deprecated")
        if dep:
            if isinstance(dep, str):
                dep = {"state": dep}
            img["deprecated"] = dep
        with self.cond:
            self.images[(project, name)] = {"created": created, "resource": img}
        return img

    def get_image(self, project: str, name: str) -> dict:
        rec = self.images.get((project, name))
        if not rec:
            raise not_found(f"projects/{project}/global/images/{name}")
        return rec["resource"]

    def image_from_family(self, project: str, family: str) -> dict:
        best = None
        for (p, _), rec in self.images.items():
            img = rec["resource"]
            if p != project or img.get("family") != family:
                continue
            if img.get("deprecated", {}).get("state", "ACTIVE") in ("DEPRECATED", "OBSOLETE", "DELETED"):
                continue
            if img.get("status") != "READY":
                continue
            if best is None or rec["created"] > best["created"]:
                best = rec
        if best is None:
            raise not_found(f"projects/{project}/global/images/family/{family}")
        return best["resource"]

    def resolve_image(self, project: str, ref: str, field: str) -> dict:
        path = ref
        for prefix in (SELF_LINK_BASE + "/", "https://compute.googleapis.com/compute/v1/",
                       "https://www.googleapis.com/compute/beta/"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        m = re.fullmatch(r"(?:projects/([^/]+)/)?global/images/(family/)?([^/]+)", path)
        if not m:
            raise invalid(field, ref, "The URL is malformed.")
        img_project = m.group(1) or project
        if m.group(2):
            return self.image_from_family(img_project, m.group(3))
        return self.get_image(img_project, m.group(3))

    # -- service accounts and tokens ---------------------------------------

    def register_service_account(self, email: str | None, project: str, base_url: str,
                                 account_id: str | None = None) -> dict:
        if not email:
            account_id = account_id or f"sa-{secrets.token_hex(4)}"
            email = f"{account_id}@{project}.iam.gserviceaccount.com"
        pem, n, e = generate_rsa_key()
        kid = secrets.token_hex(20)
        with self.cond:
            sa = self.service_accounts.setdefault(email, {
                "email": email, "project": project, "clientId": str(random.randrange(10**20, 10**21)),
                "disabled": False, "keyIds": [],
            })
            sa["keyIds"].append(kid)
            sa["disabled"] = False
            self.keys[kid] = {"email": email, "n": n, "e": e}
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": kid,
            "private_key": pem,
            "client_email": email,
            "client_id": sa["clientId"],
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": f"{base_url}/token",
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
                                    + urllib.parse.quote(email),
            "universe_domain": "googleapis.com",
        }

    def verify_jwt(self, token: str) -> tuple[dict, dict]:
        """Checks an RS256 JWT signed by a registered service-account key.

        Returns (header, claims). Raises JwtError.
        """
        parts = token.split(".")
        if len(parts) != 3:
            raise JwtError("format", "not a JWT")
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            sig = b64url_decode(parts[2])
        except Exception:
            raise JwtError("format", "undecodable JWT") from None
        if header.get("alg") != "RS256":
            raise JwtError("format", f"unsupported alg {header.get('alg')!r}")
        iss = claims.get("iss")
        with self.cond:
            key = self.keys.get(header.get("kid") or "")
            sa = self.service_accounts.get(iss or "")
        if key is None:
            # Without a kid, try every key of the issuer (Google accepts that).
            if sa and not header.get("kid"):
                with self.cond:
                    cands = [self.keys[k] for k in sa["keyIds"] if k in self.keys]
                for cand in cands:
                    if rs256_verify(cand["n"], cand["e"], f"{parts[0]}.{parts[1]}".encode(), sig):
                        key = cand
                        break
            if key is None:
                raise JwtError("signature", f"unknown key id {header.get('kid')!r}")
        elif not rs256_verify(key["n"], key["e"], f"{parts[0]}.{parts[1]}".encode(), sig):
            raise JwtError("signature", "bad RS256 signature")
        if iss != key["email"]:
            raise JwtError("signature", f"iss {iss!r} is not the owner of key {header.get('kid')!r}")
        if claims.get("sub") not in (None, iss):
            raise JwtError("account", "sub differs from iss (domain-wide delegation unsupported)")
        if sa is None or sa["disabled"]:
            raise JwtError("account", f"service account {iss!r} not found or disabled")
        now = time.time()
        try:
            iat, exp = float(claims["iat"]), float(claims["exp"])
        except (KeyError, TypeError, ValueError):
            raise JwtError("time", "iat/exp missing") from None
        if iat > now + JWT_CLOCK_SKEW or exp < now - JWT_CLOCK_SKEW or exp <= iat \
                or exp - iat > JWT_MAX_LIFETIME:
            raise JwtError("time", f"iat={iat} exp={exp} now={now:.0f}")
        if exp < now:
            raise JwtError("time", "expired")
        return header, claims

    def authenticate(self, authz: str | None) -> str:
        """Returns the principal of a compute request or raises a 401 ApiError."""
        if not authz:
            raise ApiError(
                401, "required",
                "Request is missing required authentication credential. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential. See "
                "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                extra={"location": "Authorization", "locationType": "header"},
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
                debug="no Authorization header")
        scheme, _, token = authz.partition(" ")
        cause = None
        principal = None
        if scheme.lower() != "bearer" or not token:
            cause = f"unsupported Authorization scheme {scheme!r}"
        elif token in self.static_tokens:
            principal = self.static_tokens[token]
        elif token.startswith("ya29.double."):
            # An access token issued by /token.
            with self.cond:
                rec = self.access_tokens.get(token)
                if rec and rec["expires"] > time.time():
                    sa = self.service_accounts.get(rec["email"])
                    if sa and not sa["disabled"]:
                        principal = rec["email"]
                    else:
                        cause = "service account of access token is gone"
                else:
                    cause = "unknown or expired access token"
        elif token.count(".") == 2:
            # A self-signed JWT, what google-cloud-auth's service_account
            # credentials send (they never call token_uri).
            try:
                _, claims = self.verify_jwt(token)
                scopes = set((claims.get("scope") or "").split())
                aud = claims.get("aud")
                if scopes & ACCEPTED_SCOPES or aud in ACCEPTED_AUDIENCES:
                    principal = claims["iss"]
                else:
                    cause = f"JWT has neither an accepted scope nor audience (scope={claims.get('scope')!r}, aud={aud!r})"
            except JwtError as e:
                cause = f"self-signed JWT rejected: {e.detail}"
        else:
            cause = "unknown access token"
        if principal is None:
            raise ApiError(
                401, "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential. See "
                "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                extra={"location": "Authorization", "locationType": "header"},
                headers={"WWW-Authenticate":
                         'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
                debug=cause)
        return principal

    def token_grant(self, form: dict, token_url: str) -> tuple[int, dict]:
        grant_type = form.get("grant_type", [""])[0]
        if grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return 400, {"error": "unsupported_grant_type",
                         "error_description": f"Invalid grant_type: {grant_type}"}
        assertion = form.get("assertion", [""])[0]
        try:
            _, claims = self.verify_jwt(assertion)
        except JwtError as e:
            log(f"token endpoint: rejected assertion: {e.detail}")
            if e.kind == "signature" or e.kind == "format":
                return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            if e.kind == "account":
                return 400, {"error": "invalid_grant", "error_description": "Invalid grant: account not found"}
            return 400, {"error": "invalid_grant",
                         "error_description": "Invalid JWT: Token must be a short-lived token (60 minutes) "
                                              "and in a reasonable timeframe. Check your iat and exp values "
                                              "in the JWT claim."}
        aud = claims.get("aud")
        if aud not in (token_url, GOOGLE_TOKEN_URI) and not (isinstance(aud, str) and aud.endswith("/token")):
            return 400, {"error": "invalid_grant",
                         "error_description": f"Invalid JWT: Failed audience check. The right audience is {token_url}"}
        if not claims.get("scope") and not claims.get("target_audience"):
            return 400, {"error": "invalid_scope",
                         "error_description": "Invalid OAuth scope or ID token audience provided."}
        if claims.get("target_audience"):
            # An ID token request: answer with the assertion re-wrapped (unsigned use only).
            return 200, {"id_token": assertion}
        token = "ya29.double." + secrets.token_urlsafe(32)
        with self.cond:
            self.access_tokens[token] = {"email": claims["iss"], "expires": time.time() + 3599}
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    # -- fault injection ---------------------------------------------------

    def take_injected_failure(self, route: str) -> dict | None:
        """Consumes a /double/fail-next entry matching `route` (e.g. "instances.get").

        An entry's "method" may be "*", the full route, its short name ("get",
        "insert", ...) or "operations" for any zoneOperations call.
        """
        short = route.split(".", 1)[1]
        for f in self.fail_next:
            m = f["method"]
            if not (m in ("*", route, short) or (m == "operations" and route.startswith("zoneOperations."))):
                continue
            if "code" not in f and route != "instances.insert":
                continue  # operationError entries only apply to inserts
            if f["count"] > 0:
                f["count"] -= 1
                if f["count"] <= 0:
                    self.fail_next.remove(f)
                return f
        return None

    # -- instances ---------------------------------------------------------

    def _alloc_network_ip(self, project: str, region: str) -> str:
        if self.config["networkIpFixed"]:
            return self.config["networkIpFixed"]
        a, b = REGION_SUBNETS.get(region, (10, 200 + (sum(map(ord, region)) % 50)))
        n = self.ip_counters.get((project, region), 1) + 1
        self.ip_counters[(project, region)] = n
        return f"{a}.{b}.{(n >> 8) & 0x0F}.{n & 0xFF}" if n & 0xFF not in (0, 255) else \
            self._alloc_network_ip(project, region)

    def _alloc_nat_ip(self) -> str:
        if self.config["natIpFixed"]:
            return self.config["natIpFixed"]
        base = [int(x) for x in self.config["natIpBase"].split(".")]
        self.nat_counter += 1
        n = (base[2] << 8) + base[3] + 1 + self.nat_counter
        if n & 0xFF in (0, 255):
            return self._alloc_nat_ip()
        return f"{base[0]}.{base[1]}.{(n >> 8) & 0xFF}.{n & 0xFF}"

    def insert_instance(self, project: str, zone: str, body: dict, query: dict, user: str) -> dict:
        self.check_zone(project, zone)
        region = region_of_zone(zone)
        request_id = query.get("requestId", [None])[0]
        if request_id:
            existing = self.request_ids.get((project, zone, request_id))
            if existing and (project, zone, existing) in self.operations:
                return self.render_op(self.operations[(project, zone, existing)])
        if query.get("sourceInstanceTemplate") or query.get("sourceMachineImage"):
            raise ApiError(400, "invalid", "The double does not support sourceInstanceTemplate/sourceMachineImage.")
        if not isinstance(body, dict):
            raise ApiError(400, "parseError", "Parse Error")

        name = body.get("name")
        if not name:
            raise ApiError(400, "required", "Required field 'resource.name' not specified")
        if not NAME_RE.match(name):
            raise invalid("resource.name", name,
                          "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")

        # machineType
        mt_ref = body.get("machineType")
        if not mt_ref:
            raise ApiError(400, "required", "Required field 'resource.machineType' not specified")
        m = re.search(r"(?:^|/)zones/([^/]+)/machineTypes/([^/]+)$", mt_ref)
        if not m:
            raise invalid("resource.machineType", mt_ref,
                          "Must be a match of regex '(?:[-a-z0-9]{1,63})/machineTypes/...'" )
        if m.group(1) != zone:
            raise invalid("resource.machineType", mt_ref,
                          f"Machine type specified '{m.group(2)}' is in a different zone '{m.group(1)}' "
                          f"than the instance or instance template '{zone}'.")
        mt_name = m.group(2)
        if mt_name not in MACHINE_TYPES:
            raise invalid("resource.machineType", mt_ref,
                          f"Machine type with name '{mt_name}' does not exist in zone '{zone}'.")
        cpus, mem, shared, _, _ = MACHINE_TYPES[mt_name]
        cpu_metric = FAMILY_CPU_METRIC.get(mt_name.split("-", 1)[0], "CPUS")

        # labels
        labels = body.get("labels") or {}
        if not isinstance(labels, dict) or len(labels) > 64:
            raise invalid("resource.labels", "", "Too many labels or malformed labels.")
        for k, v in labels.items():
            if not LABEL_KEY_RE.match(k):
                raise invalid("resource.labels", "",
                              f"Label key '{k}' violates format constraints. The key must start with a "
                              "lowercase character, can only contain lowercase letters, numeric characters, "
                              "underscores and dashes. The key can be at most 63 characters long. "
                              "International characters are allowed.")
            if not isinstance(v, str) or not LABEL_VALUE_RE.match(v):
                raise invalid("resource.labels", "",
                              f"Label value '{v}' violates format constraints. The value can only contain "
                              "lowercase letters, numeric characters, underscores and dashes. The value can "
                              "be at most 63 characters long. International characters are allowed.")

        # metadata
        md_in = body.get("metadata") or {}
        items = md_in.get("items") or []
        seen = set()
        for i, it in enumerate(items):
            k = it.get("key", "")
            if not METADATA_KEY_RE.match(k):
                raise invalid(f"resource.metadata.items[{i}].key", k,
                              "Must be a match of regex '[a-zA-Z0-9-_]{1,128}'")
            if k in seen:
                raise invalid("resource.metadata", "", f"Duplicate metadata key '{k}'.")
            seen.add(k)

        # tags
        tags_in = (body.get("tags") or {}).get("items") or []
        for i, t in enumerate(tags_in):
            if not NAME_RE.match(t):
                raise invalid(f"resource.tags.items[{i}]", t,
                              "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")

        # scheduling
        sched_in = body.get("scheduling") or {}
        spot = sched_in.get("provisioningModel") == "SPOT"
        preemptible = bool(sched_in.get("preemptible"))
        if spot and preemptible:
            raise invalid("resource.scheduling.preemptible", "true",
                          "Preemptible cannot be set to true when provisioning model is SPOT.")
        if (spot or preemptible) and sched_in.get("onHostMaintenance") == "MIGRATE":
            raise invalid("resource.scheduling.onHostMaintenance", "MIGRATE",
                          "Scheduling must have preemptible be false when OnHostMaintenance isn't TERMINATE.")
        if (spot or preemptible) and sched_in.get("automaticRestart") is True:
            raise invalid("resource.scheduling.automaticRestart", "true",
                          "Scheduling must have preemptible be false when AutomaticRestart is true.")
        scheduling = {
            "onHostMaintenance": "TERMINATE" if (spot or preemptible) else "MIGRATE",
            "automaticRestart": not (spot or preemptible),
            "preemptible": preemptible,
            "provisioningModel": "SPOT" if spot else "STANDARD",
        }
        scheduling.update(copy.deepcopy(sched_in))
        if spot and "instanceTerminationAction" not in scheduling:
            scheduling["instanceTerminationAction"] = "STOP"

        # disks
        disks_in = body.get("disks") or []
        boot = [d for d in disks_in if d.get("boot")]
        if not disks_in or not boot:
            raise invalid("resource.disks", "", "Boot disk must be specified.")
        if len(boot) > 1 or len(disks_in) > 1:
            raise ApiError(400, "invalid", "The double supports exactly one (boot) disk per instance.")
        disk_in = boot[0]
        init = disk_in.get("initializeParams") or {}
        if disk_in.get("source"):
            raise ApiError(400, "invalid", "The double does not support attaching existing disks (disks[0].source).")
        if not init.get("sourceImage"):
            raise invalid("resource.disks[0].initializeParams.sourceImage", "",
                          "Source image must be specified.")
        image = self.resolve_image(project, init["sourceImage"], "resource.disks[0].initializeParams.sourceImage")
        image_size = int(image["diskSizeGb"])
        size = int(init["diskSizeGb"]) if init.get("diskSizeGb") is not None else image_size
        if size < image_size:
            raise invalid("resource.disks[0].initializeParams.diskSizeGb", size,
                          f"Requested disk size cannot be smaller than the image size ({image_size} GB)")
        dt_ref = init.get("diskType") or f"zones/{zone}/diskTypes/pd-standard"
        dt_m = re.search(r"(?:^|/)zones/([^/]+)/diskTypes/([^/]+)$", dt_ref)
        if not dt_m or dt_m.group(1) != zone:
            raise invalid("resource.disks[0].initializeParams.diskType", dt_ref, "The URL is malformed.")
        disk_type = dt_m.group(2)
        if disk_type not in ("pd-standard", "pd-balanced", "pd-ssd", "pd-extreme", "hyperdisk-balanced"):
            raise not_found(f"projects/{project}/zones/{zone}/diskTypes/{disk_type}")
        disk_name = init.get("diskName") or name
        auto_delete = bool(disk_in.get("autoDelete", False))

        # network interfaces
        nics_in = body.get("networkInterfaces") or [{}]
        if len(nics_in) != 1:
            raise ApiError(400, "invalid", "The double supports exactly one network interface.")
        nic_in = nics_in[0]
        access_in = nic_in.get("accessConfigs") or []

        key = (project, zone, name)
        if key in self.instances:
            raise ApiError(409, "alreadyExists",
                           f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists")

        injected = self.take_injected_failure("instances.insert")
        if injected and injected.get("code"):
            raise ApiError(injected["code"], injected.get("reason", "backendError"),
                           injected.get("message", "Injected failure"))

        base = f"{SELF_LINK_BASE}/projects/{project}"
        self_link = f"{base}/zones/{zone}/instances/{name}"
        inst_id = new_id()
        cfg = self.config

        # Failures that GCE reports through the operation (insert returns 200).
        op_error = None
        if injected and injected.get("operationError"):
            op_error = (injected["operationError"], injected.get("httpErrorStatusCode", 400),
                        injected.get("message", "Injected operation failure"), None)
        if op_error is None:
            limits = self.quota_limits(project, region)
            usage = self.quota_usage(project, region)
            need = {cpu_metric: float(cpus), "INSTANCES": 1.0}
            for metric in ENFORCED_QUOTAS:
                if metric in need and usage[metric] + need[metric] > limits[metric]:
                    msg = f"Quota '{metric}' exceeded.  Limit: {limits[metric]:.1f} in region {region}."
                    if cfg["quotaErrorMode"] == "http":
                        raise ApiError(403, "quotaExceeded", msg)
                    metric_name, limit_name = QUOTA_INFO[metric]
                    details = [{"quotaInfo": {"metricName": metric_name, "limitName": limit_name,
                                              "dimensions": {"region": region},
                                              "limit": limits[metric]}}]
                    op_error = ("QUOTA_EXCEEDED", 403, msg, details)
                    break
        if op_error is None:
            cap = self.capacity.get(zone)
            if cap and cap.get("exhausted") and (not cap.get("machineTypes") or mt_name in cap["machineTypes"]) \
                    and (not cap.get("spotOnly") or spot):
                if cap.get("count") is not None:
                    cap["count"] -= 1
                    if cap["count"] <= 0:
                        self.capacity.pop(zone, None)
                msg = (f"The zone 'projects/{project}/zones/{zone}' does not have enough resources "
                       f"available to fulfill the request.  Try a different zone, or try again later.")
                details = [
                    {"errorInfo": {"reason": "resource_availability", "domain": "compute.googleapis.com",
                                   "metadatas": {"zone": zone, "vmType": mt_name, "attachment": "",
                                                 "zonesAvailable": ""}}},
                    {"help": {"links": [{"description": "Troubleshooting documentation",
                                         "url": "https://cloud.google.com/compute/docs/resource-error"}]}},
                    {"localizedMessage": {"locale": "en-US", "message":
                        f"A {mt_name} VM instance is currently unavailable in the {zone} zone. "
                        "Alternatively, you can try your request again with a different VM hardware "
                        "configuration or at a later time. For more information, see the "
                        "troubleshooting documentation."}},
                ]
                op_error = ("ZONE_RESOURCE_POOL_EXHAUSTED", 503, msg, details)
        if op_error is None and (project, zone, disk_name) in self.disks:
            op_error = ("RESOURCE_ALREADY_EXISTS", 409,
                        f"The resource 'projects/{project}/zones/{zone}/disks/{disk_name}' already exists", None)
        if op_error is not None:
            code, http_code, msg, details = op_error
            err_item = {"code": code, "message": msg}
            if details:
                err_item["errorDetails"] = details
            op = self.new_op(project, zone, "insert", self_link, inst_id, user, cfg["failDelay"],
                             error={"errors": [err_item]}, http_code=http_code)
            if request_id:
                self.request_ids[(project, zone, request_id)] = op["name"]
            log(f"insert {project}/{zone}/{name}: operation will fail with {code}")
            return self.render_op(op)

        # Success: build the instance resource as GCE returns it.
        now_wall = time.time()
        network = nic_in.get("network") or "global/networks/default"
        if not network.startswith("https://"):
            network = f"{SELF_LINK_BASE}/projects/{project}/{network}" if not network.startswith("projects/") \
                else f"{SELF_LINK_BASE}/{network}"
        subnetwork = nic_in.get("subnetwork") or f"regions/{region}/subnetworks/default"
        if not subnetwork.startswith("https://"):
            subnetwork = f"{SELF_LINK_BASE}/projects/{project}/{subnetwork}" \
                if not subnetwork.startswith("projects/") else f"{SELF_LINK_BASE}/{subnetwork}"
        nic = {
            "kind": "compute#networkInterface",
            "network": network,
            "subnetwork": subnetwork,
            "networkIP": nic_in.get("networkIP") or self._alloc_network_ip(project, region),
            "name": "nic0",
            "fingerprint": fingerprint(),
            "stackType": nic_in.get("stackType", "IPV4_ONLY"),
        }
        if access_in:
            acs = []
            for ac in access_in:
                acs.append({
                    "kind": "compute#accessConfig",
                    "type": ac.get("type", "ONE_TO_ONE_NAT"),
                    "name": ac.get("name", "External NAT"),
                    "natIP": ac.get("natIP") or self._alloc_nat_ip(),
                    "networkTier": ac.get("networkTier", "PREMIUM"),
                })
            nic["accessConfigs"] = acs
        metadata = {"kind": "compute#metadata", "fingerprint": fingerprint()}
        if items:
            metadata["items"] = [{"key": it["key"], "value": it.get("value", "")} for it in items]
        sas = []
        for sa in body.get("serviceAccounts") or []:
            email = sa.get("email", "default")
            if email == "default":
                email = f"{project_number(project)}-compute@developer.gserviceaccount.com"
            sas.append({"email": email, "scopes": list(sa.get("scopes") or [])})
        resource = {
            "kind": "compute#instance",
            "id": inst_id,
            "creationTimestamp": rfc3339(now_wall),
            "name": name,
            "tags": {"fingerprint": fingerprint(), **({"items": list(tags_in)} if tags_in else {})},
            "machineType": f"{base}/zones/{zone}/machineTypes/{mt_name}",
            "zone": f"{base}/zones/{zone}",
            "canIpForward": bool(body.get("canIpForward", False)),
            "networkInterfaces": [nic],
            "disks": [{
                "kind": "compute#attachedDisk",
                "type": "PERSISTENT",
                "mode": disk_in.get("mode", "READ_WRITE"),
                "source": f"{base}/zones/{zone}/disks/{disk_name}",
                "deviceName": disk_in.get("deviceName", "persistent-disk-0"),
                "index": 0,
                "boot": True,
                "autoDelete": auto_delete,
                "licenses": list(image.get("licenses", [])),
                "interface": disk_in.get("interface", "SCSI"),
                "guestOsFeatures": copy.deepcopy(image.get("guestOsFeatures", [])),
                "diskSizeGb": str(size),
                "architecture": image.get("architecture", "X86_64"),
            }],
            "metadata": metadata,
            "selfLink": self_link,
            "scheduling": scheduling,
            "cpuPlatform": "Intel Broadwell" if mt_name.startswith(("e2", "n1")) else "Intel Cascade Lake",
            "labelFingerprint": fingerprint(),
            "startRestricted": False,
            "deletionProtection": bool(body.get("deletionProtection", False)),
            "fingerprint": fingerprint(),
            "satisfiesPzi": True,
        }
        if body.get("description"):
            resource["description"] = body["description"]
        if labels:
            resource["labels"] = dict(labels)
        if sas:
            resource["serviceAccounts"] = sas
        if body.get("hostname"):
            resource["hostname"] = body["hostname"]
        for passthrough in ("shieldedInstanceConfig", "guestAccelerators", "minCpuPlatform",
                            "confidentialInstanceConfig", "advancedMachineFeatures"):
            if passthrough in body:
                resource[passthrough] = copy.deepcopy(body[passthrough])

        boot_delay = float(cfg["bootDelay"])
        inst = {
            "project": project, "zone": zone, "name": name, "id": inst_id,
            "t0": time.monotonic(), "wall0": now_wall, "bootDelay": boot_delay,
            "deleteAt": None, "deleteWall": None, "forcedStatus": None,
            "cpus": float(cpus), "cpuMetric": cpu_metric, "memoryMb": mem,
            "hasExternalIp": bool(access_in),
            "bootDisk": {"name": disk_name, "sizeGb": float(size), "type": disk_type,
                         "autoDelete": auto_delete, "sourceImage": init["sourceImage"],
                         "resolvedImage": image["selfLink"]},
            "request": copy.deepcopy(body),
            "resource": resource,
        }
        self.instances[key] = inst
        self.disks[(project, zone, disk_name)] = {
            "name": disk_name, "zone": zone, "project": project, "sizeGb": str(size),
            "type": disk_type, "sourceImage": image["selfLink"], "autoDelete": auto_delete,
            "users": [self_link],
            "initializeParams": copy.deepcopy(init),
        }
        op = self.new_op(project, zone, "insert", self_link, inst_id, user, boot_delay)
        if request_id:
            self.request_ids[(project, zone, request_id)] = op["name"]
        log(f"insert {project}/{zone}/{name}: {mt_name}, {cpus} vCPU ({cpu_metric}), "
            f"image {image['name']}, RUNNING in {boot_delay}s")
        return self.render_op(op)

    def get_instance_rec(self, project: str, zone: str, name: str) -> dict:
        self.check_zone(project, zone)
        inst = self.instances.get((project, zone, name))
        if inst is None:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return inst

    def delete_instance(self, project: str, zone: str, name: str, query: dict, user: str) -> dict:
        request_id = query.get("requestId", [None])[0]
        if request_id:
            existing = self.request_ids.get((project, zone, request_id))
            if existing and (project, zone, existing) in self.operations:
                return self.render_op(self.operations[(project, zone, existing)])
        inst = self.get_instance_rec(project, zone, name)
        injected = self.take_injected_failure("instances.delete")
        if injected and injected.get("code"):
            raise ApiError(injected["code"], injected.get("reason", "backendError"),
                           injected.get("message", "Injected failure"))
        if inst["resource"].get("deletionProtection"):
            raise ApiError(400, "resourceInUseByAnotherResource",
                           f"Invalid resource usage: 'Resource cannot be deleted if it's protected against deletion.'.")
        now = time.monotonic()
        if inst["deleteAt"] is None:
            inst["deleteAt"] = now + float(self.config["deleteDelay"])
            inst["deleteWall"] = time.time()
            inst["forcedStatus"] = None
        duration = max(inst["deleteAt"] - now, 0.0)
        op = self.new_op(project, zone, "delete", inst["resource"]["selfLink"], inst["id"], user, duration)
        if request_id:
            self.request_ids[(project, zone, request_id)] = op["name"]
        log(f"delete {project}/{zone}/{name}: gone in {duration:.2f}s")
        return self.render_op(op)

    def list_resources(self, kind: str, items: list[dict], query: dict, self_link: str, list_id: str) -> dict:
        flt = query.get("filter", [""])[0]
        order_by = query.get("orderBy", [""])[0]
        try:
            max_results = int(query.get("maxResults", ["500"])[0])
        except ValueError:
            raise invalid("maxResults", query.get("maxResults")[0], "Must be an integer.") from None
        if max_results < 0 or max_results > 500:
            raise invalid("maxResults", max_results, "Must be less than or equal to 500")
        if max_results == 0:
            max_results = 500
        try:
            f = Filter(flt) if flt.strip() else None
        except FilterError as e:
            raise ApiError(400, "invalid", f"Invalid value for field 'filter': '{flt}'. "
                                           f"Invalid list filter expression. ({e})") from None
        if f:
            items = [it for it in items if f.matches(it)]
        if order_by in ("", "name"):
            items.sort(key=lambda it: it.get("name", ""))
        elif order_by == "creationTimestamp desc":
            items.sort(key=lambda it: parse_rfc3339(it.get("creationTimestamp", "")), reverse=True)
        else:
            raise invalid("orderBy", order_by, "Sorting by this field is not supported.")
        digest = hashlib.sha1(f"{flt}|{order_by}".encode()).hexdigest()[:8]
        offset = 0
        token = query.get("pageToken", [""])[0]
        if token:
            try:
                d = json.loads(b64url_decode(token))
                offset = int(d["o"])
                if d["f"] != digest:
                    raise ValueError("filter changed")
            except Exception:
                raise invalid("pageToken", token, "The page token is invalid.") from None
        page = items[offset:offset + max_results]
        res = {"kind": kind, "id": list_id}
        if page:
            res["items"] = page
        if offset + max_results < len(items):
            res["nextPageToken"] = base64.urlsafe_b64encode(
                json.dumps({"o": offset + max_results, "f": digest}).encode()).decode().rstrip("=")
        res["selfLink"] = self_link
        return res

    # -- snapshots for tests -----------------------------------------------

    def snapshot(self) -> dict:
        with self.cond:
            self.advance()
            insts = []
            for inst in self.instances.values():
                insts.append({
                    "project": inst["project"], "zone": inst["zone"], "name": inst["name"],
                    "status": self.instance_status(inst),
                    "resource": self.render_instance(inst),
                    "insertRequest": inst["request"],
                    "bootDisk": inst["bootDisk"],
                    "cpus": inst["cpus"], "cpuMetric": inst["cpuMetric"], "memoryMb": inst["memoryMb"],
                })
            regions = {}
            projects = {i["project"] for i in self.instances.values()} | {
                k.split("/")[0] for k in self.quotas if not k.startswith("*")}
            for p in sorted(projects):
                for r in sorted(self.zones):
                    regions[f"{p}/{r}"] = {"limits": self.quota_limits(p, r), "usage": self.quota_usage(p, r)}
            return {
                "config": dict(self.config),
                "instances": insts,
                "operations": [self.render_op(op) | {"project": op["project"]}
                               for op in self.operations.values()],
                "disks": list(copy.deepcopy(self.disks).values()),
                "images": [rec["resource"] for rec in self.images.values()],
                "quotaOverrides": copy.deepcopy(self.quotas),
                "quotas": regions,
                "capacity": copy.deepcopy(self.capacity),
                "failNext": copy.deepcopy(self.fail_next),
                "zones": copy.deepcopy(self.zones),
                "serviceAccounts": [
                    {"email": sa["email"], "project": sa["project"], "keyIds": list(sa["keyIds"]),
                     "disabled": sa["disabled"]} for sa in self.service_accounts.values()],
            }


# --------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------

P = r"([^/]+)"
COMPUTE_ROUTES = [
    ("GET", rf"/compute/v1/projects/{P}/zones/{P}/instances", "instances.list"),
    ("POST", rf"/compute/v1/projects/{P}/zones/{P}/instances", "instances.insert"),
    ("GET", rf"/compute/v1/projects/{P}/zones/{P}/instances/{P}", "instances.get"),
    ("DELETE", rf"/compute/v1/projects/{P}/zones/{P}/instances/{P}", "instances.delete"),
    ("GET", rf"/compute/v1/projects/{P}/zones/{P}/operations", "zoneOperations.list"),
    ("GET", rf"/compute/v1/projects/{P}/zones/{P}/operations/{P}", "zoneOperations.get"),
    ("POST", rf"/compute/v1/projects/{P}/zones/{P}/operations/{P}/wait", "zoneOperations.wait"),
    ("DELETE", rf"/compute/v1/projects/{P}/zones/{P}/operations/{P}", "zoneOperations.delete"),
    ("GET", rf"/compute/v1/projects/{P}/global/images", "images.list"),
    ("GET", rf"/compute/v1/projects/{P}/global/images/family/{P}", "images.getFromFamily"),
    ("GET", rf"/compute/v1/projects/{P}/global/images/{P}", "images.get"),
    ("GET", rf"/compute/v1/projects/{P}/zones/{P}/machineTypes", "machineTypes.list"),
    ("GET", rf"/compute/v1/projects/{P}/zones/{P}/machineTypes/{P}", "machineTypes.get"),
    ("GET", rf"/compute/v1/projects/{P}/regions", "regions.list"),
    ("GET", rf"/compute/v1/projects/{P}/regions/{P}", "regions.get"),
    ("GET", rf"/compute/v1/projects/{P}/zones", "zones.list"),
    ("GET", rf"/compute/v1/projects/{P}/zones/{P}", "zones.get"),
]
COMPUTE_ROUTES = [(m, re.compile(p + "$"), n) for m, p, n in COMPUTE_ROUTES]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ESF"
    sys_version = ""
    state: State  # set on the class by make_server

    # -- plumbing ----------------------------------------------------------

    def log_message(self, fmt, *args):  # quiet default logging; we log ourselves
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, code: int, obj, headers: dict | None = None, content_type: str | None = None) -> None:
        data = obj if isinstance(obj, bytes) else (json.dumps(obj, indent=1) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type or "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Vary", "Origin, X-Origin, Referer")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self._status = code

    def _base_url(self) -> str:
        # gaxi sends `Host: 127.0.0.1` without the port for custom endpoints,
        # so add the bound port when the header has none.
        port = self.server.server_address[1]
        host = self.headers.get("Host") or "127.0.0.1"
        if not re.search(r":\d+$", host) or host.endswith("]"):
            host = f"{host}:{port}"
        return f"http://{host}"

    def _dispatch(self, method: str) -> None:
        self._status = 0
        started = time.monotonic()
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        self._principal = None
        note = ""
        try:
            body = self._read_body()
            if path.startswith("/compute/"):
                note = self._compute(method, path, query, body)
            elif path == "/token":
                note = self._token(method, body)
            elif path.startswith("/double/") or path == "/double":
                self._control(method, path, query, body)
            elif path in ("/", "/healthz"):
                self._send(200, {"ok": True})
            else:
                raise ApiError(404, "notFound", f"Not Found: {path}")
        except ApiError as e:
            note = e.debug or e.reason
            self._send(e.code, e.body(), e.headers)
        except Exception as e:  # pragma: no cover - bugs in the double
            import traceback
            traceback.print_exc()
            note = f"double bug: {e!r}"
            self._send(500, ApiError(500, "backendError", f"Internal error in the double: {e!r}").body())
        finally:
            dur = (time.monotonic() - started) * 1000
            principal = self._principal
            entry = {"time": time.time(), "method": method, "path": path,
                     "query": {k: v if len(v) > 1 else v[0] for k, v in query.items()},
                     "status": self._status, "principal": principal, "note": note}
            if not path.startswith("/double"):
                self.state.request_log.append(entry)
            q = f"?{parsed.query}" if parsed.query else ""
            log(f"{self.client_address[0]} {method} {path}{q} -> {self._status} "
                f"({dur:.0f} ms){' ' + principal if principal else ''}{' [' + note + ']' if note else ''}")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    # -- /compute ----------------------------------------------------------

    def _compute(self, method: str, path: str, query: dict, raw: bytes) -> str:
        st = self.state
        route = None
        args = ()
        path_known = False
        for m, rx, name in COMPUTE_ROUTES:
            mm = rx.match(path)
            if mm:
                path_known = True
                if m == method:
                    route, args = name, tuple(urllib.parse.unquote(a) for a in mm.groups())
                    break
        with st.cond:
            require_auth = st.config["requireAuth"]
        principal = "anonymous@double.invalid"
        if require_auth:
            principal = st.authenticate(self.headers.get("Authorization"))
        self._principal = principal
        if route is None:
            if path_known:
                raise ApiError(405, "httpMethodNotAllowed", f"HTTP method {method} is not supported by this URL")
            raise ApiError(404, "notFound", f"The double does not implement {method} {path}")
        body = {}
        if raw:
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                raise ApiError(400, "parseError", "Parse Error") from None

        with st.cond:
            st.advance()
            injected = None
            if route not in ("instances.insert", "instances.delete"):
                injected = st.take_injected_failure(route)
            if injected and injected.get("code"):
                raise ApiError(injected["code"], injected.get("reason", "backendError"),
                               injected.get("message", "Injected failure"))
            project = args[0]
            if route == "instances.insert":
                result = st.insert_instance(project, args[1], body, query, principal)
                note = f"op {result['name']}"
            elif route == "instances.get":
                result = st.render_instance(st.get_instance_rec(*args))
                note = result["status"]
            elif route == "instances.list":
                project, zone = args
                st.check_zone(project, zone)
                items = [st.render_instance(i) for k, i in st.instances.items()
                         if k[0] == project and k[1] == zone]
                result = st.list_resources(
                    "compute#instanceList", items, query,
                    f"{SELF_LINK_BASE}/projects/{project}/zones/{zone}/instances",
                    f"projects/{project}/zones/{zone}/instances")
                note = f"{len(result.get('items', []))} items"
            elif route == "instances.delete":
                result = st.delete_instance(*args, query, principal)
                note = f"op {result['name']}"
            elif route == "zoneOperations.get":
                result = st.render_op(self._op(*args))
                note = result["status"]
            elif route == "zoneOperations.wait":
                op = self._op(*args)
                deadline = time.monotonic() + float(st.config["waitTimeout"])
                while st.op_status(op) != "DONE":
                    remaining = min(op["tDone"], deadline) - time.monotonic()
                    if remaining <= 0:
                        break
                    st.cond.wait(timeout=min(remaining + 0.005, 1.0))
                    if (project, args[1], args[2]) not in st.operations:
                        raise not_found(f"projects/{project}/zones/{args[1]}/operations/{args[2]}")
                st.advance()
                result = st.render_op(op)
                note = result["status"]
            elif route == "zoneOperations.delete":
                self._op(*args)
                del st.operations[args]
                result = b""
            elif route == "zoneOperations.list":
                project, zone = args
                st.check_zone(project, zone)
                items = [st.render_op(o) for k, o in st.operations.items() if k[0] == project and k[1] == zone]
                result = st.list_resources(
                    "compute#operationList", items, query,
                    f"{SELF_LINK_BASE}/projects/{project}/zones/{zone}/operations",
                    f"projects/{project}/zones/{zone}/operations")
                note = ""
            elif route == "images.get":
                result = st.get_image(*args)
                note = ""
            elif route == "images.getFromFamily":
                result = st.image_from_family(*args)
                note = result["name"]
            elif route == "images.list":
                items = [copy.deepcopy(r["resource"]) for (p, _), r in st.images.items() if p == project]
                result = st.list_resources("compute#imageList", items, query,
                                           f"{SELF_LINK_BASE}/projects/{project}/global/images",
                                           f"projects/{project}/global/images")
                note = ""
            elif route == "machineTypes.get":
                project, zone, mt = args
                st.check_zone(project, zone)
                if mt not in MACHINE_TYPES:
                    raise not_found(f"projects/{project}/zones/{zone}/machineTypes/{mt}")
                result = self._machine_type(project, zone, mt)
                note = ""
            elif route == "machineTypes.list":
                project, zone = args
                st.check_zone(project, zone)
                items = [self._machine_type(project, zone, mt) for mt in MACHINE_TYPES]
                result = st.list_resources("compute#machineTypeList", items, query,
                                           f"{SELF_LINK_BASE}/projects/{project}/zones/{zone}/machineTypes",
                                           f"projects/{project}/zones/{zone}/machineTypes")
                note = ""
            elif route == "regions.get":
                project, region = args
                if not st.region_known(region):
                    raise not_found(f"projects/{project}/regions/{region}")
                result = self._region(project, region)
                note = ""
            elif route == "regions.list":
                items = [self._region(project, r) for r in st.zones]
                result = st.list_resources("compute#regionList", items, query,
                                           f"{SELF_LINK_BASE}/projects/{project}/regions",
                                           f"projects/{project}/regions")
                note = ""
            elif route == "zones.get":
                project, zone = args
                st.check_zone(project, zone)
                result = self._zone(project, zone)
                note = ""
            elif route == "zones.list":
                items = [self._zone(project, z) for zs in st.zones.values() for z in zs]
                result = st.list_resources("compute#zoneList", items, query,
                                           f"{SELF_LINK_BASE}/projects/{project}/zones",
                                           f"projects/{project}/zones")
                note = ""
            else:  # pragma: no cover
                raise ApiError(501, "notImplemented", route)
        if result == b"":
            self._send(204, b"")
        else:
            self._send(200, result)
        return f"{route} {note}".strip()

    def _op(self, project: str, zone: str, name: str) -> dict:
        st = self.state
        st.check_zone(project, zone)
        op = st.operations.get((project, zone, name))
        if op is None:
            raise not_found(f"projects/{project}/zones/{zone}/operations/{name}")
        return op

    @staticmethod
    def _machine_type(project: str, zone: str, mt: str) -> dict:
        cpus, mem, shared, desc, mid = MACHINE_TYPES[mt]
        res = {
            "kind": "compute#machineType",
            "id": mid,
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": mt,
            "description": desc,
            "guestCpus": cpus,
            "memoryMb": mem,
            "imageSpaceGb": 0,
            "maximumPersistentDisks": 16 if shared else 128,
            "maximumPersistentDisksSizeGb": "3072" if shared else "263168",
            "zone": zone,  # GCE returns the bare zone name here
            "selfLink": f"{SELF_LINK_BASE}/projects/{project}/zones/{zone}/machineTypes/{mt}",
            "isSharedCpu": shared,
            "architecture": "X86_64",
        }
        return res

    def _region(self, project: str, region: str) -> dict:
        st = self.state
        limits = st.quota_limits(project, region)
        usage = st.quota_usage(project, region)
        return {
            "kind": "compute#region",
            "id": str(1000 + sorted(st.zones).index(region)),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": region,
            "description": region,
            "status": "UP",
            "zones": [f"{SELF_LINK_BASE}/projects/{project}/zones/{z}" for z in st.zones[region]],
            "quotas": [{"metric": m, "limit": limits[m], "usage": usage[m]} for m in DEFAULT_QUOTAS],
            "selfLink": f"{SELF_LINK_BASE}/projects/{project}/regions/{region}",
            "supportsPzs": False,
        }

    def _zone(self, project: str, zone: str) -> dict:
        region = region_of_zone(zone)
        return {
            "kind": "compute#zone",
            "id": str(2000 + sum(map(ord, zone))),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": zone,
            "description": zone,
            "status": "UP",
            "region": f"{SELF_LINK_BASE}/projects/{project}/regions/{region}",
            "selfLink": f"{SELF_LINK_BASE}/projects/{project}/zones/{zone}",
            "availableCpuPlatforms": ["Intel Cascade Lake", "Intel Broadwell", "AMD Milan"],
            "supportsPzs": False,
        }

    # -- /token ------------------------------------------------------------

    def _token(self, method: str, raw: bytes) -> str:
        if method != "POST":
            self._send(405, {"error": "invalid_request", "error_description": "POST required"})
            return "token: bad method"
        ctype = self.headers.get("Content-Type", "")
        if "application/x-www-form-urlencoded" in ctype or not ctype:
            form = urllib.parse.parse_qs(raw.decode(errors="replace"))
        elif "json" in ctype:
            try:
                form = {k: [v] for k, v in json.loads(raw or b"{}").items()}
            except Exception:
                form = {}
        else:
            form = {}
        code, body = self.state.token_grant(form, f"{self._base_url()}/token")
        self._send(code, body, headers={"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate"})
        return f"token: {body.get('error') or 'issued'}"

    # -- /double -----------------------------------------------------------

    def _control(self, method: str, path: str, query: dict, raw: bytes) -> None:
        st = self.state
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise ApiError(400, "parseError", "control body is not JSON") from None
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")[1:]]
        head = parts[0] if parts else ""

        if head == "reset" and method == "POST":
            st.reset(service_accounts=bool(body.get("serviceAccounts")))
            self._send(200, {"ok": True})
        elif head in ("state", "") and method == "GET":
            self._send(200, st.snapshot())
        elif head == "requests" and method == "GET":
            self._send(200, {"requests": list(st.request_log)})
        elif head == "requests" and method == "DELETE":
            st.request_log.clear()
            self._send(200, {"ok": True})
        elif head == "config" and method == "GET":
            with st.cond:
                self._send(200, dict(st.config))
        elif head == "config" and method == "POST":
            with st.cond:
                for k, v in body.items():
                    if k == "zones":
                        for region, zones in v.items():
                            st.zones.setdefault(region, [])
                            st.zones[region] += [z for z in zones if z not in st.zones[region]]
                    elif k in st.config:
                        st.config[k] = v
                    else:
                        raise ApiError(400, "invalid", f"unknown config key {k!r}; known: {sorted(st.config)}")
                st.cond.notify_all()
                self._send(200, dict(st.config))
        elif head == "quota" and method == "POST":
            # {"project": "p" (default "*"), "region": "us-central1" (default "*"),
            #  "limits": {"CPUS": 4, "INSTANCES": 2}, "mode": "operation"|"http"}
            # or {"region": ..., "metric": "CPUS", "limit": 4}
            limits = dict(body.get("limits") or {})
            if "metric" in body:
                limits[body["metric"]] = body["limit"]
            for m in limits:
                if m not in DEFAULT_QUOTAS:
                    raise ApiError(400, "invalid", f"unknown quota metric {m!r}; known: {list(DEFAULT_QUOTAS)}")
            key = f"{body.get('project', '*')}/{body.get('region', '*')}"
            with st.cond:
                st.quotas.setdefault(key, {}).update({m: float(v) for m, v in limits.items()})
                if body.get("mode"):
                    if body["mode"] not in ("operation", "http"):
                        raise ApiError(400, "invalid", "mode must be 'operation' or 'http'")
                    st.config["quotaErrorMode"] = body["mode"]
                self._send(200, {"key": key, "limits": st.quotas[key],
                                 "mode": st.config["quotaErrorMode"]})
        elif head == "capacity" and method == "POST":
            # {"zone": "us-central1-a", "exhausted": true, "machineTypes": [...]?,
            #  "count": N? (only the next N inserts fail), "spotOnly": bool?}
            zone = body.get("zone")
            if not zone:
                raise ApiError(400, "invalid", "zone required")
            with st.cond:
                if body.get("exhausted", True):
                    st.capacity[zone] = {"exhausted": True, "machineTypes": body.get("machineTypes"),
                                         "count": body.get("count"), "spotOnly": bool(body.get("spotOnly"))}
                else:
                    st.capacity.pop(zone, None)
                self._send(200, {"capacity": copy.deepcopy(st.capacity)})
        elif head == "boot-delay" and method == "POST":
            with st.cond:
                st.config["bootDelay"] = float(body["seconds"])
                if "deleteSeconds" in body:
                    st.config["deleteDelay"] = float(body["deleteSeconds"])
                self._send(200, dict(st.config))
        elif head == "images" and method == "POST":
            # {"project", "name", "family"?, "creationTimestamp"? (RFC 3339),
            #  "deprecated"? ("DEPRECATED" or {"state": ...}), "diskSizeGb"?, "status"?}
            if not body.get("project") or not body.get("name"):
                raise ApiError(400, "invalid", "project and name required")
            self._send(200, st.add_image(body))
        elif head == "images" and method == "DELETE" and len(parts) == 3:
            with st.cond:
                st.images.pop((parts[1], parts[2]), None)
            self._send(200, {"ok": True})
        elif head == "service-accounts" and method == "POST":
            # {"email"? , "accountId"?, "project"} -> key JSON (google-cloud-auth format)
            project = body.get("project") or "test-project"
            key = st.register_service_account(body.get("email"), project, self._base_url(),
                                              body.get("accountId"))
            self._send(200, key)
        elif head == "service-accounts" and method == "GET":
            self._send(200, {"serviceAccounts": st.snapshot()["serviceAccounts"]})
        elif head == "service-accounts" and method == "DELETE" and len(parts) >= 2:
            with st.cond:
                sa = st.service_accounts.get(parts[1])
                if not sa:
                    raise ApiError(404, "notFound", f"service account {parts[1]} unknown")
                if len(parts) == 3:  # DELETE /double/service-accounts/{email}/{kid}
                    st.keys.pop(parts[2], None)
                    sa["keyIds"] = [k for k in sa["keyIds"] if k != parts[2]]
                else:
                    sa["disabled"] = True
            self._send(200, {"ok": True})
        elif head == "static-token" and method == "POST":
            token = body.get("token") or secrets.token_urlsafe(24)
            with st.cond:
                st.static_tokens[token] = body.get("principal", "static-token@double.invalid")
            self._send(200, {"token": token})
        elif head == "instances" and method == "POST" and len(parts) == 2 and parts[1] == "status":
            # {"project", "zone", "name", "status": "TERMINATED" | null (back to lifecycle)}
            with st.cond:
                st.advance()
                inst = st.get_instance_rec(body["project"], body["zone"], body["name"])
                inst["forcedStatus"] = body.get("status")
                st.cond.notify_all()
                self._send(200, st.render_instance(inst))
        elif head == "instances" and method == "POST" and len(parts) == 2 and parts[1] == "vanish":
            # Removes an instance at once, without an operation (e.g. spot preemption
            # with instanceTerminationAction=DELETE, or a manual deletion elsewhere).
            with st.cond:
                inst = st.get_instance_rec(body["project"], body["zone"], body["name"])
                inst["deleteAt"] = time.monotonic()
                inst["deleteWall"] = time.time()
                st.advance()
                st.cond.notify_all()
            self._send(200, {"ok": True})
        elif head == "fail-next" and method == "POST":
            # {"method": "insert"|"delete"|"get"|"list"|"wait"|"operations"|"getFromFamily"|"*",
            #  "count": 1, "code": 503, "reason": "backendError", "message": "..."}
            # or for insert: {"method": "insert", "operationError": "CODE", "httpErrorStatusCode": 400}
            spec = {"method": body.get("method", "*"), "count": int(body.get("count", 1))}
            for k in ("code", "reason", "message", "operationError", "httpErrorStatusCode"):
                if k in body:
                    spec[k] = body[k]
            if "code" not in spec and "operationError" not in spec:
                spec["code"] = 503
                spec.setdefault("reason", "backendError")
            with st.cond:
                st.fail_next.append(spec)
            self._send(200, {"failNext": st.fail_next})
        else:
            raise ApiError(404, "notFound", f"unknown control endpoint {method} {path}")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(host: str, port: int, state: State) -> Server:
    handler = type("BoundHandler", (Handler,), {"state": state})
    return Server((host, port), handler)


def write_atomic(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".gce-double-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--port-file", help="write the bound port here (atomically)")
    ap.add_argument("--boot-delay", type=float, default=None, help="seconds until RUNNING (default 2)")
    ap.add_argument("--delete-delay", type=float, default=None, help="seconds STOPPING before gone (default 1)")
    ap.add_argument("--no-auth", action="store_true", help="accept /compute calls without credentials")
    ap.add_argument("--service-account-key-out", metavar="FILE",
                    help="register a service account at start and write its key JSON here")
    ap.add_argument("--service-account-email", default=None,
                    help="email for --service-account-key-out (default nodepool@PROJECT.iam.gserviceaccount.com)")
    ap.add_argument("--project", default="test-project", help="project of that service account")
    args = ap.parse_args(argv)

    # CLI delays become the defaults, so they survive /double/reset.
    base_default_config = default_config

    def cli_default_config():
        cfg = base_default_config()
        if args.boot_delay is not None:
            cfg["bootDelay"] = args.boot_delay
        if args.delete_delay is not None:
            cfg["deleteDelay"] = args.delete_delay
        return cfg

    globals()["default_config"] = cli_default_config
    state = State(require_auth=not args.no_auth)

    server = make_server(args.host, args.port, state)
    port = server.server_address[1]
    if args.service_account_key_out:
        email = args.service_account_email or f"nodepool@{args.project}.iam.gserviceaccount.com"
        key = state.register_service_account(email, args.project, f"http://{args.host}:{port}")
        write_atomic(args.service_account_key_out, json.dumps(key, indent=2) + "\n")
        log(f"service account {email} key written to {args.service_account_key_out}")
    if args.port_file:
        write_atomic(args.port_file, f"{port}\n")
    print(port, flush=True)
    log(f"listening on http://{args.host}:{port} (auth {'off' if args.no_auth else 'on'})")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
