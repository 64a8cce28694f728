{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "nodepool-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every resource (63 characters at most: some Kubernetes names are DNS labels).
If the release name contains the chart name, it is used as is.
*/}}
{{- define "nodepool-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "nodepool-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "nodepool-operator.labels" -}}
helm.sh/chart: {{ include "nodepool-operator.chart" . }}
{{ include "nodepool-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nodepool-operator
{{- end }}

{{/*
Labels that identify the release's objects (never change them: Deployment selectors are immutable).
*/}}
{{- define "nodepool-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nodepool-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Per component. Components are "operator" and "zk-bridge"; their values are .Values.operator and
.Values.bridge. The generic helpers below take (dict "root" $ "component" "operator"); use the
named wrappers ("nodepool-operator.operator.fullname", "nodepool-operator.bridge.labels", ...).
*/}}

{{/* Full name: the operator's is the chart's full name, the bridge's has "-zk-bridge" appended. */}}
{{- define "nodepool-operator.component.fullname" -}}
{{- $fullname := include "nodepool-operator.fullname" .root }}
{{- if eq .component "operator" }}
{{- $fullname }}
{{- else }}
{{- printf "%s-%s" ($fullname | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component }}
{{- end }}
{{- end }}

{{- define "nodepool-operator.component.labels" -}}
{{ include "nodepool-operator.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "nodepool-operator.component.selectorLabels" -}}
{{ include "nodepool-operator.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Key of the component's values: "operator" or "bridge". */}}
{{- define "nodepool-operator.component.valuesKey" -}}
{{- ternary "operator" "bridge" (eq .component "operator") }}
{{- end }}

{{- define "nodepool-operator.component.serviceAccountName" -}}
{{- $values := index .root.Values (include "nodepool-operator.component.valuesKey" .) }}
{{- if $values.serviceAccount.create }}
{{- default (include "nodepool-operator.component.fullname" .) $values.serviceAccount.name }}
{{- else }}
{{- default "default" $values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nodepool-operator.operator.fullname" -}}
{{- include "nodepool-operator.component.fullname" (dict "root" . "component" "operator") }}
{{- end }}
{{- define "nodepool-operator.operator.labels" -}}
{{- include "nodepool-operator.component.labels" (dict "root" . "component" "operator") }}
{{- end }}
{{- define "nodepool-operator.operator.selectorLabels" -}}
{{- include "nodepool-operator.component.selectorLabels" (dict "root" . "component" "operator") }}
{{- end }}
{{- define "nodepool-operator.operator.serviceAccountName" -}}
{{- include "nodepool-operator.component.serviceAccountName" (dict "root" . "component" "operator") }}
{{- end }}

{{- define "nodepool-operator.bridge.fullname" -}}
{{- include "nodepool-operator.component.fullname" (dict "root" . "component" "zk-bridge") }}
{{- end }}
{{- define "nodepool-operator.bridge.labels" -}}
{{- include "nodepool-operator.component.labels" (dict "root" . "component" "zk-bridge") }}
{{- end }}
{{- define "nodepool-operator.bridge.selectorLabels" -}}
{{- include "nodepool-operator.component.selectorLabels" (dict "root" . "component" "zk-bridge") }}
{{- end }}
{{- define "nodepool-operator.bridge.serviceAccountName" -}}
{{- include "nodepool-operator.component.serviceAccountName" (dict "root" . "component" "zk-bridge") }}
{{- end }}

{{/*
Namespace whose nodepool.dev objects are served (--namespace).
*/}}
{{- define "nodepool-operator.watchNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace }}
{{- end }}

{{/*
The image of both containers.
*/}}
{{- define "nodepool-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
ZooKeeper connect string: host:port[,host:port...][/chroot], as in Zuul's `hosts`.
*/}}
{{- define "nodepool-operator.zookeeperHosts" -}}
{{- $hosts := required "zookeeper.hosts must list at least one host:port" .Values.zookeeper.hosts }}
{{- printf "%s%s" (join "," $hosts) (.Values.zookeeper.chroot | default "") }}
{{- end }}

{{/*
Pod-level security context (both components).
*/}}
{{- define "nodepool-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container-level security context (both components).
*/}}
{{- define "nodepool-operator.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Arguments and environment both binaries share. Takes (dict "root" $ "component" ...).
*/}}
{{- define "nodepool-operator.commonArgs" -}}
- --namespace={{ include "nodepool-operator.watchNamespace" .root }}
- --http-address=0.0.0.0:{{ .root.Values.httpPort }}
- --leader-election
- --leader-election-namespace={{ .root.Release.Namespace }}
- --streaming-lists={{ .root.Values.streamingLists }}
{{- if eq .root.Values.logFormat "json" }}
- --log-json
{{- end }}
{{- end }}

{{- define "nodepool-operator.commonEnv" -}}
# Leader-election identity.
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: RUST_LOG
  value: {{ .root.Values.logLevel | quote }}
{{- end }}

{{/*
Probes on the `http` port (both components).
*/}}
{{- define "nodepool-operator.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}

{{/*
Role and RoleBinding for the leader-election Lease of one component, in the release namespace.
Takes (dict "root" $ "component" ...).
*/}}
{{- define "nodepool-operator.leaderElectionRbac" -}}
{{- $name := printf "%s-leader-election" (include "nodepool-operator.component.fullname" . | trunc 47 | trimSuffix "-") }}
# Leader election: with more than one replica exactly one pod is active. It holds a
# coordination.k8s.io Lease in the release namespace (--leader-election-namespace).
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "nodepool-operator.component.labels" . | nindent 4 }}
rules:
  # Read the Lease to see who leads, create it if it does not exist yet, renew it while leading
  # (update/patch) and take it over once it expires. `create` cannot be limited by name.
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "create", "update", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "nodepool-operator.component.labels" . | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ include "nodepool-operator.component.serviceAccountName" . }}
    namespace: {{ .root.Release.Namespace }}
{{- end }}
