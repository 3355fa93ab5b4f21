{{/* The chart's name, shortened to a DNS label. */}}
{{- define "guix-farm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The base name of every object: the release name, unless it already holds the chart's name. */}}
{{- define "guix-farm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "guix-farm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: {{ include "guix-farm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "guix-farm.controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "guix-farm.name" . }}-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The namespace of Builds, AgentPools, agents and Leases. */}}
{{- define "guix-farm.farmNamespace" -}}
{{- default .Release.Namespace .Values.farm.namespace }}
{{- end }}

{{- define "guix-farm.controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.controller.create }}
{{- default (printf "%s-controller" (include "guix-farm.fullname" .)) .Values.serviceAccount.controller.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.controller.name }}
{{- end }}
{{- end }}

{{- define "guix-farm.agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.agent.create }}
{{- default (printf "%s-agent" (include "guix-farm.fullname" .)) .Values.serviceAccount.agent.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.agent.name }}
{{- end }}
{{- end }}

{{- define "guix-farm.controller.image" -}}
{{- printf "%s:%s" .Values.controller.image.repository (default .Chart.AppVersion .Values.controller.image.tag) }}
{{- end }}

{{- define "guix-farm.agent.image" -}}
{{- printf "%s:%s" .Values.agent.image.repository (default .Chart.AppVersion .Values.agent.image.tag) }}
{{- end }}

{{/*
The rules of a generated ClusterRole, read from the chart's copy of config/rbac/<who>/role.yaml
(files/rbac/<who>-role.yaml, kept equal by `make chart-rbac` and checked by test/chart).
*/}}
{{- define "guix-farm.rules" -}}
{{- $role := .root.Files.Get (printf "files/rbac/%s-role.yaml" .who) | fromYaml }}
{{- if not $role.rules }}
{{- fail (printf "files/rbac/%s-role.yaml has no rules: run `make chart-rbac`" .who) }}
{{- end }}
{{- toYaml $role.rules }}
{{- end }}

{{/* The username of the agents' ServiceAccount in their tokens, which the identity policy matches. */}}
{{- define "guix-farm.agent.username" -}}
{{- printf "system:serviceaccount:%s:%s" (include "guix-farm.farmNamespace" .) (include "guix-farm.agent.serviceAccountName" .) }}
{{- end }}

{{/* The publisher service's in-cluster URL, as agents reach it. */}}
{{- define "guix-farm.publisher.url" -}}
{{- printf "http://%s-publisher.%s.svc:%v" (include "guix-farm.fullname" .) .Release.Namespace .Values.controller.publisher.port }}
{{- end }}

{{/* Where agent pods mount the token they send the publisher service. */}}
{{- define "guix-farm.publisher.tokenDir" -}}
/var/run/secrets/guixfarm.io/publisher
{{- end }}

{{/*
The bucket's anonymous URL, where clients and the agents' daemons substitute from:
agent.bucketURL, or <controller.bucket.endpoint>/<controller.bucket.name> (http:// when the
endpoint has no scheme); empty without a bucket.
*/}}
{{- define "guix-farm.bucketURL" -}}
{{- $b := .Values.controller.bucket }}
{{- if .Values.agent.bucketURL }}
{{- .Values.agent.bucketURL }}
{{- else if $b.name }}
{{- printf "%s/%s" (ternary $b.endpoint (printf "http://%s" $b.endpoint) (contains "://" $b.endpoint)) $b.name }}
{{- end }}
{{- end }}

{{/*
"true" when the controller makes agent pods for AgentPools (--agent-image): always with the test
builder, and with the daemon builder only when it can publish, through the publisher service.
A daemon agent without it would hold the bucket's credentials or fail: the chart runs neither.
*/}}
{{- define "guix-farm.agentPods" -}}
{{- if not (has .Values.agent.builder (list "daemon" "test")) }}
{{- fail (printf "agent.builder %q: want daemon (builds through the daemon sidecar) or test (sleeps)" (toString .Values.agent.builder)) }}
{{- end }}
{{- if or (eq .Values.agent.builder "test") .Values.controller.publisher.enabled }}true{{ end }}
{{- end }}

{{/*
A list value as one comma-separated flag value (the controller splits it at commas), refusing
items that hold a comma. Call with (dict "name" "agent.extraArgs" "list" .Values.agent.extraArgs).
*/}}
{{- define "guix-farm.commaList" -}}
{{- range $i, $v := .list }}
{{- if contains "," (toString $v) }}
{{- fail (printf "%s[%d] %q holds a comma, which the controller's flag splits at: give one value without commas" $.name $i (toString $v)) }}
{{- end }}
{{- end }}
{{- join "," .list }}
{{- end }}

{{/* The ConfigMap of the Guix public keys the agents' daemons accept (agent.daemon.authorizedKeys). */}}
{{- define "guix-farm.daemonKeys.name" -}}
{{- printf "%s-daemon-keys" (include "guix-farm.fullname" .) }}
{{- end }}

{{/* Where the controller reads those keys (--daemon-authorized-keys). */}}
{{- define "guix-farm.daemonKeys.dir" -}}
/etc/guix-farm/daemon-keys
{{- end }}
