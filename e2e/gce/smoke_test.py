#!/usr/bin/env python3
"""Smoke test of gce_double.py over HTTP (standard library + the openssl command).

Starts the double on a free loopback port, authenticates the way the Rust
`google-cloud-auth` 1.18 service-account credentials do (a self-signed RS256
JWT sent directly as the bearer token), and walks through the API surface the
GCE driver uses. Prints 'N passed, N failed' and exits non-zero on failure.

    python3 e2e/gce/smoke_test.py
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = "smoke-project"
ZONE = "us-central1-a"
REGION = "us-central1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def sign_rs256(pem: str, data: bytes) -> bytes:
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
        f.write(pem)
        path = f.name
    try:
        return subprocess.run(["openssl", "dgst", "-sha256", "-sign", path], input=data,
                              check=True, capture_output=True).stdout
    finally:
        os.unlink(path)


def self_signed_jwt(key: dict, *, scope: str | None = "https://www.googleapis.com/auth/cloud-platform",
                    aud: str | None = None, kid: str | None = "key", lifetime: int = 3600,
                    iat_offset: int = -10) -> str:
    """Builds the token google-cloud-auth's ServiceAccountTokenGenerator builds."""
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = key["private_key_id"] if kid == "key" else kid
    claims = {"iss": key["client_email"]}
    if scope is not None:
        claims["scope"] = scope
    claims["aud"] = aud  # serialized as null when None, like the Rust struct
    claims["exp"] = now + iat_offset + 20 + lifetime
    claims["iat"] = now + iat_offset
    claims["sub"] = key["client_email"]
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign_rs256(key['private_key'], signing_input.encode()))}"


class Client:
    def __init__(self, base: str):
        self.base = base
        self.token: str | None = None

    def call(self, method: str, path: str, body=None, query: dict | None = None,
             token: str | None = "default", raw_body: bytes | None = None,
             content_type: str = "application/json"):
        q = {"$alt": "json", "$apiVersion": "2026-09-01"} if path.startswith("/compute/") else {}
        q.update(query or {})
        url = self.base + path + ("?" + urllib.parse.urlencode(q) if q else "")
        data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
        if data is None and method == "POST":
            data = b"{}"
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        tok = self.token if token == "default" else token
        if tok and path.startswith("/compute/"):
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                payload = r.read()
                return r.status, (json.loads(payload) if payload.strip() else None), dict(r.headers)
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                parsed = json.loads(payload)
            except Exception:
                parsed = payload.decode(errors="replace")
            return e.code, parsed, dict(e.headers)

    def ok(self, method, path, body=None, **kw):
        code, obj, _ = self.call(method, path, body, **kw)
        assert code == 200, f"{method} {path} -> {code}: {obj}"
        return obj

    def control(self, method, path, body=None):
        return self.ok(method, "/double/" + path, body)


# --------------------------------------------------------------------------

def compute(path: str) -> str:
    return f"/compute/v1/projects/{PROJECT}{path}"


def instance_body(name: str, *, machine_type="e2-small", labels=None, external_ip=True, spot=False,
                  image="projects/debian-cloud/global/images/family/debian-12", disk_size="20") -> dict:
    body = {
        "name": name,
        "machineType": f"zones/{ZONE}/machineTypes/{machine_type}",
        "labels": labels or {"nodepool-provider": "gce-main", "nodepool-pool": "small"},
        "metadata": {"items": [{"key": "ssh-keys", "value": "zuul:ssh-ed25519 AAAA zuul"},
                               {"key": "nodepool-node-id", "value": "0000000001"}]},
        "tags": {"items": ["zuul-node"]},
        "disks": [{
            "boot": True, "autoDelete": True, "type": "PERSISTENT",
            "initializeParams": {"sourceImage": image, "diskSizeGb": disk_size,  # int64 as string
                                 "diskType": f"zones/{ZONE}/diskTypes/pd-balanced"},
        }],
        "networkInterfaces": [{"network": "global/networks/default",
                               **({"accessConfigs": [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]}
                                  if external_ip else {})}],
        "serviceAccounts": [{"email": "default", "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
    }
    if spot:
        body["scheduling"] = {"provisioningModel": "SPOT", "preemptible": False,
                              "onHostMaintenance": "TERMINATE", "automaticRestart": False,
                              "instanceTerminationAction": "DELETE"}
    return body


def poll_operation(c: Client, op: dict, timeout: float = 15.0) -> dict:
    """Polls like the Rust discovery poller: GET zones/{zone}/operations/{name}."""
    deadline = time.time() + timeout
    seen = [op["status"]]
    while op["status"] != "DONE":
        assert time.time() < deadline, f"operation {op['name']} not DONE in time: {op}"
        time.sleep(0.1)
        op = c.ok("GET", compute(f"/zones/{ZONE}/operations/{op['name']}"), query={"$alt": "json"})
        if seen[-1] != op["status"]:
            seen.append(op["status"])
    op["_seen"] = seen
    return op


def assert_error(obj, code: int, reason: str, status: str | None = None):
    assert isinstance(obj, dict) and "error" in obj, f"not an error body: {obj}"
    e = obj["error"]
    assert e["code"] == code, e
    assert e["errors"][0]["reason"] == reason, e
    assert e["errors"][0]["domain"] == "global", e
    assert e["message"] and e["errors"][0]["message"], e
    if status:
        assert e["status"] == status, e


def assert_rfc3339(s: str):
    datetime.datetime.fromisoformat(s)  # raises on malformed values
    assert "T" in s and (s.endswith("Z") or s[-6] in "+-"), s


# --------------------------------------------------------------------------
# Tests. Each takes (client, key) and raises AssertionError on failure.

def test_unauthenticated_and_bad_tokens(c: Client, key: dict):
    code, obj, headers = c.call("GET", compute(f"/zones/{ZONE}/instances"), token=None)
    assert code == 401, code
    assert_error(obj, 401, "required", "UNAUTHENTICATED")
    assert "Bearer" in headers.get("WWW-Authenticate", ""), headers
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/instances"), token="ya29.bogus")
    assert_error(obj, 401, "authError", "UNAUTHENTICATED")
    # A JWT signed by a key the double does not know.
    stranger = dict(key, private_key=subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        check=True, capture_output=True, text=True).stdout)
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/instances"), token=self_signed_jwt(stranger))
    assert_error(obj, 401, "authError", "UNAUTHENTICATED")
    # Right key, but neither scope nor audience.
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/instances"), token=self_signed_jwt(key, scope=None))
    assert code == 401, (code, obj)
    # Expired token.
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/instances"),
                          token=self_signed_jwt(key, iat_offset=-7200))
    assert code == 401, (code, obj)
    # Audience form of self-signed JWT is accepted.
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/instances"),
                          token=self_signed_jwt(key, scope=None, aud="https://compute.googleapis.com/"))
    assert code == 200, (code, obj)


def test_token_endpoint(c: Client, key: dict):
    def grant(assertion, grant_type="urn:ietf:params:oauth:grant-type:jwt-bearer"):
        form = urllib.parse.urlencode({"grant_type": grant_type, "assertion": assertion}).encode()
        return c.call("POST", "/token", raw_body=form, content_type="application/x-www-form-urlencoded")

    token_uri = key["token_uri"]
    assert token_uri == c.base + "/token", token_uri
    code, obj, _ = grant(self_signed_jwt(key, aud=token_uri))
    assert code == 200 and obj["token_type"] == "Bearer" and obj["expires_in"] > 3000, (code, obj)
    access = obj["access_token"]
    code, lst, _ = c.call("GET", compute(f"/zones/{ZONE}/instances"), token=access)
    assert code == 200, (code, lst)
    # Unknown service account (key not registered with the double).
    stranger = dict(key, client_email="nobody@elsewhere.iam.gserviceaccount.com",
                    private_key_id="0" * 40,
                    private_key=subprocess.run(
                        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                        check=True, capture_output=True, text=True).stdout)
    code, obj, _ = grant(self_signed_jwt(stranger, aud=token_uri))
    assert code == 400 and obj["error"] == "invalid_grant", (code, obj)
    code, obj, _ = grant(self_signed_jwt(key, aud=token_uri), grant_type="password")
    assert code == 400 and obj["error"] == "unsupported_grant_type", (code, obj)
    # A disabled service account can no longer get tokens, and its JWTs are refused.
    other = c.control("POST", "service-accounts", {"project": PROJECT, "accountId": "disabled-sa"})
    assert other["client_email"] == f"disabled-sa@{PROJECT}.iam.gserviceaccount.com", other
    code, _, _ = c.call("GET", compute(f"/zones/{ZONE}/instances"), token=self_signed_jwt(other))
    assert code == 200
    c.control("DELETE", "service-accounts/" + urllib.parse.quote(other["client_email"]))
    code, obj, _ = grant(self_signed_jwt(other, aud=token_uri))
    assert code == 400 and obj["error"] == "invalid_grant", (code, obj)
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/instances"), token=self_signed_jwt(other))
    assert code == 401, (code, obj)


def test_machine_types(c: Client, key: dict):
    want = {"e2-small": (2, 2048), "e2-medium": (2, 4096), "n2-standard-2": (2, 8192), "n2-standard-4": (4, 16384)}
    for name, (cpus, mem) in want.items():
        mt = c.ok("GET", compute(f"/zones/{ZONE}/machineTypes/{name}"))
        assert mt["kind"] == "compute#machineType" and mt["name"] == name, mt
        assert (mt["guestCpus"], mt["memoryMb"]) == (cpus, mem), mt
        assert mt["selfLink"].endswith(f"/projects/{PROJECT}/zones/{ZONE}/machineTypes/{name}"), mt
        assert mt["id"].isdigit(), mt
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/machineTypes/e2-huge"))
    assert_error(obj, 404, "notFound", "NOT_FOUND")


def test_images_and_families(c: Client, key: dict):
    img = c.ok("GET", "/compute/v1/projects/debian-cloud/global/images/family/debian-12")
    assert img["name"] == "debian-12-bookworm-v20241009", img
    assert img["kind"] == "compute#image" and img["family"] == "debian-12" and img["status"] == "READY", img
    assert img["selfLink"] == ("https://www.googleapis.com/compute/v1/projects/debian-cloud/global/images/"
                               "debian-12-bookworm-v20241009"), img
    assert_rfc3339(img["creationTimestamp"])
    got = c.ok("GET", "/compute/v1/projects/debian-cloud/global/images/debian-12-bookworm-v20240910")
    assert got["name"] == "debian-12-bookworm-v20240910"
    now = datetime.datetime.now(datetime.timezone.utc)
    # A newer but deprecated image does not win.
    c.control("POST", "images", {"project": PROJECT, "name": "zuul-base-v2", "family": "zuul-base",
                                 "creationTimestamp": (now - datetime.timedelta(days=1)).isoformat(),
                                 "deprecated": "DEPRECATED"})
    c.control("POST", "images", {"project": PROJECT, "name": "zuul-base-v1", "family": "zuul-base",
                                 "creationTimestamp": (now - datetime.timedelta(days=3)).isoformat()})
    c.control("POST", "images", {"project": PROJECT, "name": "zuul-base-v0", "family": "zuul-base",
                                 "creationTimestamp": (now - datetime.timedelta(days=9)).isoformat()})
    assert c.ok("GET", compute("/global/images/family/zuul-base"))["name"] == "zuul-base-v1"
    c.control("POST", "images", {"project": PROJECT, "name": "zuul-base-v3", "family": "zuul-base",
                                 "creationTimestamp": now.isoformat()})
    assert c.ok("GET", compute("/global/images/family/zuul-base"))["name"] == "zuul-base-v3"
    code, obj, _ = c.call("GET", "/compute/v1/projects/debian-cloud/global/images/family/debian-10")
    assert_error(obj, 404, "notFound", "NOT_FOUND")
    assert obj["error"]["message"] == \
        "The resource 'projects/debian-cloud/global/images/family/debian-10' was not found", obj


def test_instance_lifecycle(c: Client, key: dict):
    c.control("POST", "boot-delay", {"seconds": 1.2, "deleteSeconds": 0.6})
    body = instance_body("np0000000001", spot=True)
    op = c.ok("POST", compute(f"/zones/{ZONE}/instances"), body)
    assert op["kind"] == "compute#operation" and op["operationType"] == "insert", op
    assert op["status"] in ("PENDING", "RUNNING"), op
    assert op["name"].startswith("operation-") and op["id"].isdigit(), op
    assert op["targetLink"].endswith(f"/zones/{ZONE}/instances/np0000000001"), op
    assert op["selfLink"].endswith(f"/zones/{ZONE}/operations/{op['name']}"), op
    assert op["user"] == key["client_email"], op
    assert_rfc3339(op["insertTime"])

    inst = c.ok("GET", compute(f"/zones/{ZONE}/instances/np0000000001"))
    assert inst["status"] == "PROVISIONING", inst["status"]

    done = poll_operation(c, op)
    assert "error" not in done, done
    assert done["progress"] == 100 and "endTime" in done, done
    assert done["_seen"][-1] == "DONE", done["_seen"]

    inst = c.ok("GET", compute(f"/zones/{ZONE}/instances/np0000000001"))
    assert inst["status"] == "RUNNING", inst["status"]
    assert inst["kind"] == "compute#instance" and inst["id"].isdigit() and inst["id"] == op["targetId"], inst
    assert_rfc3339(inst["creationTimestamp"])
    assert inst["machineType"] == (f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{ZONE}/"
                                   "machineTypes/e2-small"), inst["machineType"]
    assert inst["zone"].endswith(f"/projects/{PROJECT}/zones/{ZONE}"), inst["zone"]
    nic = inst["networkInterfaces"][0]
    assert nic["networkIP"].startswith("10.128."), nic
    assert nic["accessConfigs"][0]["natIP"], nic
    assert inst["labels"] == body["labels"], inst["labels"]
    assert inst["metadata"]["items"] == body["metadata"]["items"], inst["metadata"]
    assert inst["tags"]["items"] == ["zuul-node"], inst["tags"]
    assert inst["scheduling"]["provisioningModel"] == "SPOT", inst["scheduling"]
    assert inst["scheduling"]["instanceTerminationAction"] == "DELETE", inst["scheduling"]
    disk = inst["disks"][0]
    assert disk["boot"] and disk["diskSizeGb"] == "20" and disk["autoDelete"], disk
    assert inst["serviceAccounts"][0]["email"].endswith("-compute@developer.gserviceaccount.com"), inst
    # The double keeps what was sent, including initializeParams, for tests to inspect.
    state = c.control("GET", "state")
    rec = [i for i in state["instances"] if i["name"] == "np0000000001"][0]
    assert rec["insertRequest"]["disks"][0]["initializeParams"]["diskType"].endswith("pd-balanced"), rec
    assert rec["bootDisk"]["resolvedImage"].endswith("debian-12-bookworm-v20241009"), rec["bootDisk"]

    # Second insert with the same name: 409 alreadyExists (synchronous).
    code, obj, _ = c.call("POST", compute(f"/zones/{ZONE}/instances"), body)
    assert code == 409, (code, obj)
    assert_error(obj, 409, "alreadyExists", "ALREADY_EXISTS")

    # Same requestId: the same operation comes back (GCE's idempotent retry).
    op1 = c.ok("POST", compute(f"/zones/{ZONE}/instances"), instance_body("np0000000002"),
               query={"requestId": "6c1a4b1e-0000-4000-8000-000000000001"})
    op2 = c.ok("POST", compute(f"/zones/{ZONE}/instances"), instance_body("np0000000002"),
               query={"requestId": "6c1a4b1e-0000-4000-8000-000000000001"})
    assert op1["name"] == op2["name"], (op1, op2)
    # operations.wait blocks until DONE.
    waited = c.ok("POST", compute(f"/zones/{ZONE}/operations/{op1['name']}/wait"))
    assert waited["status"] == "DONE", waited

    # Delete: an operation; the instance is STOPPING, then gone.
    dop = c.ok("DELETE", compute(f"/zones/{ZONE}/instances/np0000000002"))
    assert dop["operationType"] == "delete" and dop["status"] != "DONE", dop
    inst = c.ok("GET", compute(f"/zones/{ZONE}/instances/np0000000002"))
    assert inst["status"] == "STOPPING", inst["status"]
    done = poll_operation(c, dop)
    assert "error" not in done, done
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/instances/np0000000002"))
    assert code == 404, (code, obj)
    assert_error(obj, 404, "notFound", "NOT_FOUND")
    assert obj["error"]["message"] == \
        f"The resource 'projects/{PROJECT}/zones/{ZONE}/instances/np0000000002' was not found", obj
    code, obj, _ = c.call("DELETE", compute(f"/zones/{ZONE}/instances/np0000000002"))
    assert_error(obj, 404, "notFound", "NOT_FOUND")
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/operations/operation-nope"))
    assert_error(obj, 404, "notFound", "NOT_FOUND")


def test_list_filter_and_pages(c: Client, key: dict):
    c.control("POST", "boot-delay", {"seconds": 0.3, "deleteSeconds": 0.2})
    ops = []
    for i, pool in enumerate(["small", "small", "large", "small"]):
        ops.append(c.ok("POST", compute(f"/zones/{ZONE}/instances"),
                        instance_body(f"np10{i}", labels={"nodepool-provider": "gce-main", "nodepool-pool": pool})))
    c.ok("POST", compute(f"/zones/{ZONE}/instances"),
         instance_body("other-vm", labels={"owner": "someone-else"}, external_ip=False))
    for op in ops:
        poll_operation(c, op)

    def names(flt=None, **q):
        query = dict(q)
        if flt is not None:
            query["filter"] = flt
        res = c.ok("GET", compute(f"/zones/{ZONE}/instances"), query=query)
        assert res["kind"] == "compute#instanceList", res
        return [i["name"] for i in res.get("items", [])], res

    got, _ = names("labels.nodepool-pool = small")
    assert got == ["np0000000001", "np100", "np101", "np103"], got
    got, _ = names("labels.nodepool-pool=large")
    assert got == ["np102"], got
    got, _ = names('(labels.nodepool-provider = "gce-main") AND (labels.nodepool-pool = "small") AND (name != np101)')
    assert got == ["np0000000001", "np100", "np103"], got
    got, _ = names("name = other-vm")
    assert got == ["other-vm"], got
    got, _ = names("labels.owner:*")
    assert got == ["other-vm"], got
    got, _ = names("name eq np10[0-2]")
    assert got == ["np100", "np101", "np102"], got
    got, res = names("labels.nodepool-pool = nothing")
    assert got == [] and "items" not in res, res
    # Pagination.
    seen, token, pages = [], None, 0
    while True:
        q = {"maxResults": "2", "filter": "labels.nodepool-provider = gce-main"}
        if token:
            q["pageToken"] = token
        res = c.ok("GET", compute(f"/zones/{ZONE}/instances"), query=q)
        pages += 1
        seen += [i["name"] for i in res.get("items", [])]
        token = res.get("nextPageToken")
        if not token:
            break
    assert pages == 3 and seen == ["np0000000001", "np100", "np101", "np102", "np103"], (pages, seen)
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/instances"), query={"pageToken": "garbage"})
    assert_error(obj, 400, "invalid", "INVALID_ARGUMENT")
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/instances"), query={"filter": "labels.x = (("})
    assert_error(obj, 400, "invalid", "INVALID_ARGUMENT")
    # Invalid label value is refused like GCE does.
    code, obj, _ = c.call("POST", compute(f"/zones/{ZONE}/instances"),
                          instance_body("np-bad", labels={"pool": "Has Upper"}))
    assert_error(obj, 400, "invalid", "INVALID_ARGUMENT")
    # Missing image: synchronous 404.
    code, obj, _ = c.call("POST", compute(f"/zones/{ZONE}/instances"),
                          instance_body("np-noimg", image="projects/debian-cloud/global/images/family/debian-10"))
    assert_error(obj, 404, "notFound", "NOT_FOUND")
    # Unknown zone.
    code, obj, _ = c.call("GET", compute("/zones/us-central1-z/instances"))
    assert_error(obj, 404, "notFound", "NOT_FOUND")


def test_region_quota(c: Client, key: dict):
    region = c.ok("GET", compute(f"/regions/{REGION}"))
    assert region["kind"] == "compute#region" and region["name"] == REGION, region
    quotas = {q["metric"]: q for q in region["quotas"]}
    live = [i for i in c.control("GET", "state")["instances"] if i["zone"].startswith(REGION)
            and i["project"] == PROJECT]
    want_cpus = sum(i["cpus"] for i in live if i["cpuMetric"] == "CPUS")
    assert quotas["CPUS"]["usage"] == want_cpus and want_cpus > 0, (quotas["CPUS"], want_cpus)
    assert quotas["INSTANCES"]["usage"] == len(live), (quotas["INSTANCES"], len(live))
    assert region["zones"][0].endswith(f"/zones/{REGION}-a"), region["zones"]

    # CPUS limit: one more e2-small (2 vCPU) would exceed it.
    c.control("POST", "quota", {"project": PROJECT, "region": REGION,
                                "limits": {"CPUS": want_cpus + 1, "INSTANCES": 100}, "mode": "operation"})
    region = c.ok("GET", compute(f"/regions/{REGION}"))
    assert {q["metric"]: q for q in region["quotas"]}["CPUS"]["limit"] == want_cpus + 1
    op = c.ok("POST", compute(f"/zones/{ZONE}/instances"), instance_body("np-over-quota"))
    assert "error" not in op, op  # the insert call itself succeeds
    done = poll_operation(c, op)
    err = done["error"]["errors"][0]
    assert err["code"] == "QUOTA_EXCEEDED", done
    assert err["message"] == f"Quota 'CPUS' exceeded.  Limit: {want_cpus + 1:.1f} in region {REGION}.", err
    assert err["errorDetails"][0]["quotaInfo"]["metricName"] == "compute.googleapis.com/cpus", err
    assert done["httpErrorStatusCode"] == 403 and done["httpErrorMessage"] == "FORBIDDEN", done
    code, _, _ = c.call("GET", compute(f"/zones/{ZONE}/instances/np-over-quota"))
    assert code == 404, code
    # N2 machines draw on N2_CPUS, not CPUS.
    op = c.ok("POST", compute(f"/zones/{ZONE}/instances"), instance_body("np-n2", machine_type="n2-standard-2"))
    assert "error" not in poll_operation(c, op)
    region = c.ok("GET", compute(f"/regions/{REGION}"))
    assert {q["metric"]: q for q in region["quotas"]}["N2_CPUS"]["usage"] == 2, region["quotas"]

    # The alternative mode: the insert is refused with HTTP 403 quotaExceeded.
    c.control("POST", "quota", {"project": PROJECT, "region": REGION, "limits": {"INSTANCES": len(live) + 1, "CPUS": 1000},
                                "mode": "http"})
    code, obj, _ = c.call("POST", compute(f"/zones/{ZONE}/instances"), instance_body("np-over-quota-2"))
    assert code == 403, (code, obj)
    assert_error(obj, 403, "quotaExceeded")
    assert "Quota 'INSTANCES' exceeded" in obj["error"]["message"], obj
    c.control("POST", "quota", {"project": PROJECT, "region": REGION,
                                "limits": {"CPUS": 1000, "INSTANCES": 1000}, "mode": "operation"})

    # Zone capacity: the operation fails with ZONE_RESOURCE_POOL_EXHAUSTED.
    c.control("POST", "capacity", {"zone": ZONE, "exhausted": True, "count": 1})
    op = c.ok("POST", compute(f"/zones/{ZONE}/instances"), instance_body("np-no-capacity"))
    done = poll_operation(c, op)
    assert done["error"]["errors"][0]["code"] == "ZONE_RESOURCE_POOL_EXHAUSTED", done
    assert done["httpErrorStatusCode"] == 503, done
    op = c.ok("POST", compute(f"/zones/{ZONE}/instances"), instance_body("np-capacity-back"))
    assert "error" not in poll_operation(c, op)


def test_fault_injection_and_reset(c: Client, key: dict):
    c.control("POST", "fail-next", {"method": "instances.get", "code": 503, "reason": "backendError"})
    code, obj, _ = c.call("GET", compute(f"/zones/{ZONE}/instances/np100"))
    assert code == 503 and obj["error"]["status"] == "UNAVAILABLE", (code, obj)
    code, _, _ = c.call("GET", compute(f"/zones/{ZONE}/instances/np100"))
    assert code == 200
    c.control("POST", "instances/status", {"project": PROJECT, "zone": ZONE, "name": "np100",
                                           "status": "TERMINATED"})
    assert c.ok("GET", compute(f"/zones/{ZONE}/instances/np100"))["status"] == "TERMINATED"
    reqs = c.control("GET", "requests")["requests"]
    assert any(r["path"].endswith("/instances") and r["method"] == "POST" for r in reqs)
    c.control("POST", "reset")
    res = c.ok("GET", compute(f"/zones/{ZONE}/instances"))
    assert "items" not in res, res
    # Service accounts survive a plain reset.
    assert c.ok("GET", compute(f"/regions/{REGION}"))["name"] == REGION


TESTS = [
    test_unauthenticated_and_bad_tokens,
    test_token_endpoint,
    test_machine_types,
    test_images_and_families,
    test_instance_lifecycle,
    test_list_filter_and_pages,
    test_region_quota,
    test_fault_injection_and_reset,
]


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="gce-double-smoke-")
    port_file = os.path.join(tmp, "port")
    key_file = os.path.join(tmp, "sa.json")
    log_path = os.path.join(tmp, "double.log")
    log_file = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "gce_double.py"), "--port", "0", "--port-file", port_file,
         "--service-account-key-out", key_file, "--project", PROJECT, "--boot-delay", "0.5"],
        stdout=subprocess.PIPE, stderr=log_file, text=True)
    passed = failed = 0
    try:
        port = int(proc.stdout.readline().strip())
        with open(port_file) as f:
            assert int(f.read().strip()) == port
        with open(key_file) as f:
            key = json.load(f)
        for field in ("type", "project_id", "private_key_id", "private_key", "client_email", "token_uri"):
            assert key.get(field), field
        assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM expected"
        c = Client(f"http://127.0.0.1:{port}")
        c.token = self_signed_jwt(key)
        for t in TESTS:
            started = time.time()
            try:
                t(c, key)
                passed += 1
                print(f"PASS {t.__name__} ({time.time() - started:.1f}s)", flush=True)
            except Exception:
                failed += 1
                print(f"FAIL {t.__name__}", flush=True)
                traceback.print_exc()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()
        if failed:
            print(f"--- double log ({log_path}) ---")
            with open(log_path) as f:
                print("".join(f.readlines()[-60:]))
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed == len(TESTS) else 1


if __name__ == "__main__":
    sys.exit(main())
