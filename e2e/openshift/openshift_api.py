#!/usr/bin/env python3
"""OpenShift's project API in front of a real kube-apiserver, for the OpenShift driver's tests.

No OpenShift runs here, so this stand-in serves what OpenShift adds for projects and passes
every other request through to the test environment's kube-apiserver unchanged, with the
caller's own bearer token: Zuul and the driver talk to one API server, as they would to
OpenShift's. What it serves, as OpenShift 4's project API behaves (openshift-apiserver
`pkg/project`, the default project template):

- `POST /apis/project.openshift.io/v1/projectrequests`: the caller must be allowed to create
  `projectrequests` (a SubjectAccessReview against the real apiserver's RBAC, as OpenShift's
  self-provisioner role grants it). The project is a namespace annotated with the requester,
  display name and description; the request's labels are not carried over (the template does
  not use them). The requester is made `admin` of it (a RoleBinding `admin`). The answer is the
  `Project` (201); a name in use is 409 `AlreadyExists` for `project.openshift.io` `projects`.
- `GET .../projectrequests` answers a `Status` Success when the caller may request projects
  (what `oc new-project` checks); a ProjectRequest cannot be read back
  (`GET .../projectrequests/<name>` is 405 MethodNotAllowed).
- `GET .../projects`: the projects whose `projects` the caller may `get` (RBAC, namespace by
  namespace), label selectors honoured; `GET .../projects/<name>`, `DELETE .../projects/<name>`
  (deletes the namespace, answers a `Status` Success), each authorized the same way. A project
  is `Active` or `Terminating` as its namespace is.
- Discovery of `project.openshift.io/v1`.

Not served: project templates other than the default, `displayName`/`description` updates,
quota on self-provisioned projects, and the older `/oapi` paths. At start it adds the rules
OpenShift's `admin` role has on projects to the cluster's `admin` role (an aggregated
ClusterRole), so a project's admin may read and delete it.
"""

import argparse
import datetime
import http.client
import http.server
import json
import re
import ssl
import sys
import urllib.parse

GROUP = "project.openshift.io"
VERSION = "v1"
PREFIX = "/apis/%s/%s" % (GROUP, VERSION)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Apiserver:
    """The real kube-apiserver: as this stand-in (admin client certificate) or as a caller."""

    def __init__(self, url, ca, cert, key):
        parsed = urllib.parse.urlparse(url)
        self.host, self.port = parsed.hostname, parsed.port
        self.admin_tls = ssl.create_default_context(cafile=ca)
        self.admin_tls.load_cert_chain(cert, key)
        self.caller_tls = ssl.create_default_context(cafile=ca)

    def request(self, method, path, body=None, headers=None, as_admin=True):
        tls = self.admin_tls if as_admin else self.caller_tls
        conn = http.client.HTTPSConnection(self.host, self.port, context=tls, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def json(self, method, path, doc=None):
        body = json.dumps(doc).encode() if doc is not None else None
        status, _, data = self.request(method, path, body, {"Content-Type": "application/json"})
        return status, (json.loads(data) if data else None)


def status_doc(code, reason, message, details=None):
    doc = {"kind": "Status", "apiVersion": "v1", "metadata": {},
           "status": "Success" if code < 300 else "Failure",
           "message": message, "reason": reason, "code": code}
    if details:
        doc["details"] = details
    return doc


def project_of(namespace):
    meta = namespace["metadata"]
    return {
        "kind": "Project", "apiVersion": "%s/%s" % (GROUP, VERSION),
        "metadata": {key: meta[key] for key in
                     ("name", "uid", "resourceVersion", "creationTimestamp", "labels",
                      "annotations", "deletionTimestamp") if key in meta},
        "spec": {"finalizers": namespace.get("spec", {}).get("finalizers", ["kubernetes"])},
        "status": {"phase": namespace.get("status", {}).get("phase", "Active")},
    }


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api = None  # set in main

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (datetime.datetime.now().isoformat(), fmt % args))

    # -- plumbing -----------------------------------------------------------------------------

    def reply(self, code, doc, headers=()):
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def proxy(self):
        """Anything that is not the project API goes to the apiserver as it came."""
        body = self.body()
        headers = {name: value for name, value in self.headers.items()
                   if name.lower() not in ("host", "connection", "content-length")}
        if body:
            headers["Content-Length"] = str(len(body))
        status, response_headers, data = self.api.request(
            self.command, self.path, body or None, headers, as_admin=False)
        self.send_response(status)
        for name, value in response_headers:
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def caller(self):
        """The user the bearer token belongs to (a TokenReview), or None."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        _, review = self.api.json("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": auth[len("Bearer "):]}})
        status = (review or {}).get("status", {})
        return status.get("user") if status.get("authenticated") else None

    def allowed(self, user, verb, resource, namespace=None, name=None):
        attributes = {"group": GROUP, "resource": resource, "verb": verb}
        if namespace:
            attributes["namespace"] = namespace
        if name:
            attributes["name"] = name
        _, review = self.api.json("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user["username"], "groups": user.get("groups", []),
                     "uid": user.get("uid", ""), "resourceAttributes": attributes}})
        return bool((review or {}).get("status", {}).get("allowed"))

    def forbidden(self, user, verb, resource, name=None, namespace=None):
        what = '%s "%s"' % (resource, name) if name else resource
        message = '%s is forbidden: User "%s" cannot %s resource "%s" in API group "%s"' % (
            what, user["username"], verb, resource, GROUP)
        if namespace:
            message += ' in the namespace "%s"' % namespace
        else:
            message += " at the cluster scope"
        self.reply(403, status_doc(403, "Forbidden", message,
                                   {"name": name, "group": GROUP, "kind": resource}))

    # -- routing --------------------------------------------------------------------------------

    def route(self):
        path = urllib.parse.urlparse(self.path)
        if not path.path.startswith("/apis/" + GROUP):
            return self.proxy()
        if path.path in ("/apis/" + GROUP, "/apis/%s/" % GROUP):
            return self.reply(200, {"kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
                                    "versions": [{"groupVersion": GROUP + "/v1", "version": "v1"}],
                                    "preferredVersion": {"groupVersion": GROUP + "/v1", "version": "v1"}})
        if path.path.rstrip("/") == PREFIX:
            return self.reply(200, discovery())
        user = self.caller()
        if user is None:
            return self.reply(401, status_doc(401, "Unauthorized", "Unauthorized"))
        query = urllib.parse.parse_qs(path.query)
        parts = path.path[len(PREFIX):].strip("/").split("/")
        resource, name = parts[0], (parts[1] if len(parts) > 1 else None)
        if resource == "projectrequests":
            return self.project_requests(user, name)
        if resource == "projects":
            return self.projects(user, name, query)
        self.reply(404, status_doc(404, "NotFound", "the server could not find the requested resource"))

    def project_requests(self, user, name):
        if name is not None:
            return self.reply(405, status_doc(405, "MethodNotAllowed",
                                              "the server does not allow this method on the requested resource"))
        if not self.allowed(user, "create" if self.command == "POST" else "list", "projectrequests"):
            message = "You may not request a new project via this API."
            return self.reply(403, status_doc(403, "Forbidden", message,
                                              {"group": GROUP, "kind": "projectrequests"}))
        if self.command == "GET":
            return self.reply(200, status_doc(200, "", ""))
        if self.command != "POST":
            return self.reply(405, status_doc(405, "MethodNotAllowed", "method not allowed"))
        try:
            request = json.loads(self.body() or b"{}")
        except ValueError as error:
            return self.reply(400, status_doc(400, "BadRequest", "not JSON: %s" % error))
        name = (request.get("metadata") or {}).get("name", "")
        if not DNS_LABEL.match(name) or len(name) > 63:
            message = 'ProjectRequest "%s" is invalid: metadata.name: Invalid value: "%s": ' \
                      "a lowercase RFC 1123 label must consist of lower case alphanumeric " \
                      "characters or '-'" % (name, name)
            return self.reply(422, status_doc(422, "Invalid", message,
                                              {"name": name, "group": GROUP, "kind": "ProjectRequest"}))
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": name,
            "annotations": {"openshift.io/requester": user["username"],
                            "openshift.io/display-name": request.get("displayName", ""),
                            "openshift.io/description": request.get("description", "")}}}
        code, created = self.api.json("POST", "/api/v1/namespaces", namespace)
        if code == 409:
            message = 'project.project.openshift.io "%s" already exists' % name
            return self.reply(409, status_doc(409, "AlreadyExists", message,
                                              {"name": name, "group": GROUP, "kind": "projects"}))
        if code >= 300:
            return self.reply(code, created)
        code, answer = self.api.json("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/%s/rolebindings" % name, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "admin", "namespace": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [subject_of(user)]})
        if code >= 300:
            return self.reply(500, status_doc(500, "InternalError", "making the requester admin: %s" % answer))
        self.reply(201, project_of(created))

    def projects(self, user, name, query):
        if name is None:
            if self.command != "GET":
                return self.reply(405, status_doc(405, "MethodNotAllowed", "method not allowed"))
            selector = query.get("labelSelector", [""])[0]
            path = "/api/v1/namespaces" + ("?labelSelector=" + urllib.parse.quote(selector) if selector else "")
            code, listed = self.api.json("GET", path)
            if code >= 300:
                return self.reply(code, listed)
            visible = [project_of(ns) for ns in listed["items"]
                       if self.allowed(user, "get", "projects", ns["metadata"]["name"], ns["metadata"]["name"])]
            return self.reply(200, {"kind": "ProjectList", "apiVersion": "%s/%s" % (GROUP, VERSION),
                                    "metadata": {"resourceVersion": listed["metadata"].get("resourceVersion", "")},
                                    "items": visible})
        verb = {"GET": "get", "DELETE": "delete"}.get(self.command)
        if verb is None:
            return self.reply(405, status_doc(405, "MethodNotAllowed", "method not allowed"))
        if not self.allowed(user, verb, "projects", name, name):
            return self.forbidden(user, verb, "projects", name, name)
        if verb == "get":
            code, namespace = self.api.json("GET", "/api/v1/namespaces/%s" % name)
            if code == 404:
                return self.reply(404, status_doc(404, "NotFound", 'projects.project.openshift.io "%s" not found' % name,
                                                  {"name": name, "group": GROUP, "kind": "projects"}))
            return self.reply(code, project_of(namespace) if code < 300 else namespace)
        self.body()
        code, answer = self.api.json("DELETE", "/api/v1/namespaces/%s" % name)
        if code == 404:
            return self.reply(404, status_doc(404, "NotFound", 'projects.project.openshift.io "%s" not found' % name,
                                              {"name": name, "group": GROUP, "kind": "projects"}))
        if code >= 300:
            return self.reply(code, answer)
        self.reply(200, status_doc(200, "", ""))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = route


def subject_of(user):
    username = user["username"]
    if username.startswith("system:serviceaccount:"):
        _, _, namespace, name = username.split(":", 3)
        return {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": username}


def discovery():
    def resource(name, kind, verbs, namespaced=False):
        return {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs}
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP + "/v1", "resources": [
        resource("projectrequests", "ProjectRequest", ["create", "list"]),
        resource("projects", "Project", ["create", "delete", "get", "list", "patch", "update", "watch"]),
    ]}


def install_admin_rules(api):
    """OpenShift's `admin` role reads and deletes its project; aggregate that into `admin`."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "openshift-project-admin",
                         "labels": {"rbac.authorization.k8s.io/aggregate-to-admin": "true"}},
            "rules": [{"apiGroups": [GROUP], "resources": ["projects"],
                       "verbs": ["delete", "get", "patch", "update"]}]}
    code, answer = api.json("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", role)
    if code not in (201, 409):
        raise SystemExit("installing the project admin rules: %s %s" % (code, answer))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--apiserver", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--client-cert", required=True, help="admin client certificate for the apiserver")
    parser.add_argument("--client-key", required=True)
    parser.add_argument("--serving-cert", required=True)
    parser.add_argument("--serving-key", required=True)
    args = parser.parse_args()
    Handler.api = Apiserver(args.apiserver, args.ca, args.client_cert, args.client_key)
    install_admin_rules(Handler.api)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.serving_cert, args.serving_key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    sys.stderr.write("serving OpenShift's project API on 127.0.0.1:%d, in front of %s\n"
                     % (args.port, args.apiserver))
    server.serve_forever()


if __name__ == "__main__":
    main()
