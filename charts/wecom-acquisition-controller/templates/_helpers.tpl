{{/* Names, labels and guards shared by every template of the chart. */}}

{{- define "wecom-acq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wecom-acq.fullname" -}}
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

{{- define "wecom-acq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wecom-acq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wecom-acq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wecom-acq.labels" -}}
helm.sh/chart: {{ include "wecom-acq.chart" . }}
{{ include "wecom-acq.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: wecom-acquisition-controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "wecom-acq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wecom-acq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wecom-acq.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Combinations the schema cannot express. Two controllers without a Lease would both write
to WeCom and fight over status; one port cannot serve both listeners.
*/}}
{{- define "wecom-acq.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: two controllers would both write to WeCom. Set leaderElection.enabled=true or replicaCount=1." (int .Values.replicaCount)) }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.callback.port) }}
{{- fail (printf "metrics.port and callback.port are both %d: give the two listeners different ports." (int .Values.metrics.port)) }}
{{- end }}
{{- if and .Values.callback.ingress.enabled (not .Values.callback.ingress.hosts) }}
{{- fail "callback.ingress.enabled is true but callback.ingress.hosts is empty: WeCom needs a host name in the callback URL." }}
{{- end }}
{{- if not .Values.allowedApiHosts }}
{{- fail "allowedApiHosts is empty: no WeComApp could reach WeCom. List qyapi.weixin.qq.com (the default) and any proxy WeComApps name." }}
{{- end }}
{{- end }}

{{/* The controller's rules, shared by the ClusterRole and the namespaced Role. */}}
{{- define "wecom-acq.controllerRules" -}}
- apiGroups: ["acquisition.wecom.dev"]
  resources: ["acquisitionlinks", "wecomapps"]
  verbs: ["get", "list", "watch", "patch", "update"]
{{- /* A corp that authorises a WeComSuite gets a WeComApp (server-side apply). */}}
- apiGroups: ["acquisition.wecom.dev"]
  resources: ["wecomapps"]
  verbs: ["create"]
{{- /* Suites are read by name when their callbacks arrive; never listed. */}}
- apiGroups: ["acquisition.wecom.dev"]
  resources: ["wecomsuites"]
  verbs: ["get"]
- apiGroups: ["acquisition.wecom.dev"]
  resources: ["wecomsuites/status"]
  verbs: ["get", "patch"]
- apiGroups: ["acquisition.wecom.dev"]
  resources: ["acquisitionlinks/status", "wecomapps/status"]
  verbs: ["get", "patch", "update"]
{{- /* The finalizers that guard the remote link (deletionPolicy) and an app in use. */}}
- apiGroups: ["acquisition.wecom.dev"]
  resources: ["acquisitionlinks/finalizers", "wecomapps/finalizers"]
  verbs: ["update"]
{{- /* App secrets and callback keys: read by name only (get). No list or watch: those
would hand the controller every Secret of every watched namespace. */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- /* A suite's latest ticket and its corps' permanent codes are written by name
(server-side apply), still never listed or watched. */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
