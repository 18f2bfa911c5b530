{{/* Names: the release's objects are all called after the full name ("regcred" for the
release "regcred"), so two releases in one cluster do not collide on cluster-scoped ones. */}}
{{- define "regcred.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "regcred.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "regcred.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "regcred.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "regcred.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: fixed for the life of a release (a Deployment's selector is immutable). */}}
{{- define "regcred.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regcred.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "regcred.labels" -}}
{{ include "regcred.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "regcred.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* metadata.annotations (indented for metadata): commonAnnotations plus the object's own
(`own`, a dict, wins), or nothing at all. Values are quoted, never line-wrapped. */}}
{{- define "regcred.annotations" -}}
{{- $all := merge (dict) (.own | default dict) (.root.Values.commonAnnotations | default dict) }}
{{- with $all }}
  annotations:
  {{- range $key, $value := . }}
    {{ $key }}: {{ $value | quote }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The operator image: a digest wins over a tag; the tag defaults to the chart's appVersion. */}}
{{- define "regcred.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The source-namespace allow-list: the values, or the release's own namespace. */}}
{{- define "regcred.sourceNamespaces" -}}
{{- join "," (.Values.sourceNamespaces | default (list .Release.Namespace)) }}
{{- end }}
