{{/*
Chart name, at most 63 characters.
*/}}
{{- define "tiny-forge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the chart name.
At most 63 characters (some Kubernetes name fields are limited to that).
*/}}
{{- define "tiny-forge.fullname" -}}
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
Chart label value: name-version.
*/}}
{{- define "tiny-forge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "tiny-forge.labels" -}}
helm.sh/chart: {{ include "tiny-forge.chart" . }}
{{ include "tiny-forge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels (stable across upgrades).
*/}}
{{- define "tiny-forge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tiny-forge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "tiny-forge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tiny-forge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Controller instance (TINY_FORGE_INSTANCE): .Values.instance, else the release name. It is a
label value on every container the controller creates, so it must be one: at most 63
characters, alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric.
*/}}
{{- define "tiny-forge.instance" -}}
{{- $instance := default .Release.Name .Values.instance | toString }}
{{- if not .Values.instance }}
{{- $instance = $instance | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$" $instance) }}
{{- fail (printf "instance %q is not a valid label value: at most 63 characters, alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric" $instance) }}
{{- end }}
{{- $instance }}
{{- end }}

{{/*
Lease name (TINY_FORGE_LEASE_NAME), in the release namespace.
*/}}
{{- define "tiny-forge.leaseName" -}}
{{- default (include "tiny-forge.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Secret holding the webhook URL secret (TINY_FORGE_WEBHOOK_SECRET). Created by the controller.
*/}}
{{- define "tiny-forge.webhookSecretName" -}}
{{- default (printf "%s-webhook" (include "tiny-forge.fullname" .)) .Values.webhook.secretName }}
{{- end }}

{{/*
Image reference.
*/}}
{{- define "tiny-forge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
Docker endpoint (DOCKER_HOST): required.
*/}}
{{- define "tiny-forge.dockerHost" -}}
{{- if not .Values.docker.host }}
{{- fail "docker.host is required: the Docker engine tiny-forge deploys to, e.g. --set docker.host=tcp://docker.example:2376 (add docker.tls.secretName for TLS)" }}
{{- end }}
{{- .Values.docker.host }}
{{- end }}

{{/*
Rules on tinyforge.dev resources and events, shared by the ClusterRole (all namespaces) and the
Role (one watched namespace).
*/}}
{{- define "tiny-forge.watchRules" -}}
# Read and watch Projects and Stages; patch adds/removes the controller's finalizer (JSON patch
# on the main resource). create only with webhook.autoCreate (Projects for unknown images).
- apiGroups: ["tinyforge.dev"]
  resources: ["projects", "stages"]
  verbs: ["get", "list", "watch", "patch"{{ if .Values.webhook.autoCreate }}, "create"{{ end }}]
# Status is written through the status subresource only.
- apiGroups: ["tinyforge.dev"]
  resources: ["projects/status", "stages/status"]
  verbs: ["get", "patch"]
# Events are written in the namespace of the object they are about.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
