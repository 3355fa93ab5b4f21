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
