{{/* Names, labels and small computed values shared by every template of the chart. */}}

{{- define "dra-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release name, plus the chart name unless the release name already contains it. */}}
{{- define "dra-operator.fullname" -}}
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

{{- define "dra-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "dra-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dra-operator
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "dra-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dra-operator.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "dra-operator.componentLabels" -}}
{{ include "dra-operator.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "dra-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "dra-operator.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "dra-operator.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dra-operator.agentServiceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (printf "%s-agent" (include "dra-operator.fullname" .)) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dra-operator.webhookServiceName" -}}
{{- printf "%s-webhook" (include "dra-operator.fullname" .) }}
{{- end }}

{{- define "dra-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "dra-operator.fullname" .) }}
{{- end }}

{{/* The cluster-scoped Mutating- and ValidatingWebhookConfiguration (one name) the operator keeps up to date. */}}
{{- define "dra-operator.webhookConfigurationName" -}}
{{- include "dra-operator.fullname" . }}
{{- end }}

{{/* The Secret holding the webhook's CA and serving certificate (made at install, or by cert-manager). */}}
{{- define "dra-operator.webhookCertSecretName" -}}
{{- printf "%s-webhook-cert" (include "dra-operator.fullname" .) }}
{{- end }}

{{- define "dra-operator.leaseName" -}}
{{- default (printf "%s-leader" (include "dra-operator.fullname" .)) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{- define "dra-operator.agentDriver" -}}
{{- if .Values.agent.driver }}
{{- .Values.agent.driver }}
{{- else if eq .Values.agent.backend "simulated" }}
{{- "driver.example.com" }}
{{- else }}
{{- "gpu.nvidia.com" }}
{{- end }}
{{- end }}

{{- /*
Where the chart's hook Pods (CRD upgrade, agent clean-up, helm test) may run: the operator's nodeSelector and
tolerations, so they land where the operator's Pods can (the nodes that reach the API server and pull the
image). Not its affinity: the default one, and most users', are about the operator's replicas.
*/ -}}
{{- define "dra-operator.hookPlacement" -}}
{{- with .Values.operator.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.operator.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
