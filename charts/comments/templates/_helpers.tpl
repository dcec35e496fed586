{{/* Chart name, or nameOverride. */}}
{{- define "comments.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's resources: the release name, plus the chart name unless it
already contains it (release "comments" -> "comments"; release "blog" -> "blog-comments"). */}}
{{- define "comments.fullname" -}}
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

{{/* Labels selecting the pods: never change them on an existing release (selectors are immutable). */}}
{{- define "comments.selectorLabels" -}}
app.kubernetes.io/name: {{ include "comments.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "comments.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "comments.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of the `helm test` pod (see networkpolicy.yaml). */}}
{{- define "comments.testLabels" -}}
app.kubernetes.io/name: {{ include "comments.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{- define "comments.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "comments.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Ports the binary listens on inside the pod. Defined once: the container ports, the listen
addresses in the ConfigMap and the probes all come from here. */}}
{{- define "comments.httpPort" -}}8080{{- end }}
{{- define "comments.metricsPort" -}}9090{{- end }}

{{/* Where the pod's files live: the SQLite volume and the mounted Secrets. */}}
{{- define "comments.dataDir" -}}/data{{- end }}
{{- define "comments.adminTokenFile" -}}/etc/comments/admin-token/token{{- end }}
{{- define "comments.databaseUrlFile" -}}/etc/comments/database/url{{- end }}

{{/* "true" when the pods use the embedded SQLite store (no PostgreSQL Secret given), else "". */}}
{{- define "comments.sqlite" -}}
{{- if not .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{/* Refuses values that render fine but cannot work; called from the Deployment. */}}
{{- define "comments.validate" -}}
{{- if include "comments.sqlite" . }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount is %d, but the embedded SQLite store serves a single replica: set replicaCount to 1, or use PostgreSQL (database.existingSecret) to run more" (int .Values.replicaCount)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs PostgreSQL (database.existingSecret): the embedded SQLite store serves a single replica" }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- with .Values.podDisruptionBudget }}
{{- if and .enabled (not (kindIs "string" .minAvailable)) }}
{{- $replicas := ternary $.Values.autoscaling.minReplicas $.Values.replicaCount $.Values.autoscaling.enabled | int }}
{{- if ge (int .minAvailable) $replicas }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) is not below the replica count (%d): no pod could ever be evicted and node drains would hang; lower it or run more replicas" (int .minAvailable) $replicas) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
