{{/* Labels on every object: the same as manifests/ (part-of), plus Helm's own. */}}
{{- define "rayshape.labels" -}}
app.kubernetes.io/part-of: rayshape
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "rayshape.version" -}}
{{ printf "v%s" .Chart.AppVersion }}
{{- end -}}

{{- define "rayshape.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default (include "rayshape.version" .) }}
{{- end -}}

{{- define "rayshape.sidecarImage" -}}
{{ .Values.sidecar.image.repository }}:{{ .Values.sidecar.image.tag | default (include "rayshape.version" .) }}
{{- end -}}

{{/* The port the webhook listens on: 10250 on GKE (private clusters' firewall). */}}
{{- define "rayshape.port" -}}
{{- if .Values.port -}}{{ .Values.port }}{{- else if eq .Values.provider "gke" -}}10250{{- else -}}8443{{- end -}}
{{- end -}}

{{- define "rayshape.checkValues" -}}
{{- if not (has .Values.provider (list "generic" "eks" "karpenter" "gke" "aks")) -}}
{{- fail (printf "provider must be generic, eks, karpenter, gke or aks, not %q" .Values.provider) -}}
{{- end -}}
{{- if not (has .Values.certificates.mode (list "cert-manager" "self-managed")) -}}
{{- fail (printf "certificates.mode must be cert-manager or self-managed, not %q" .Values.certificates.mode) -}}
{{- end -}}
{{- if and (eq .Values.certificates.mode "self-managed") (not .Values.certificates.caBundle) -}}
{{- fail "certificates.mode self-managed needs certificates.caBundle: --set certificates.caBundle=$(rayshape-certs ca-bundle --dir certs)" -}}
{{- end -}}
{{- if not (has .Values.webhook.failurePolicy (list "Fail" "Ignore")) -}}
{{- fail (printf "webhook.failurePolicy must be Fail or Ignore, not %q" .Values.webhook.failurePolicy) -}}
{{- end -}}
{{- end -}}

{{/* The webhook configuration's namespaceSelector, the same for each webhook. */}}
{{- define "rayshape.namespaceSelector" -}}
matchExpressions:
- key: kubernetes.io/metadata.name
  operator: NotIn
  values:
  {{- range (concat (list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace) .Values.webhook.excludeNamespaces) }}
  - {{ . }}
  {{- end }}
- key: rayshape.io/webhook
  operator: NotIn
  values:
  - disabled
{{- if eq .Values.provider "aks" }}
- key: control-plane
  operator: NotIn
  values:
  - "true"
- key: kubernetes.azure.com/managedby
  operator: NotIn
  values:
  - aks
{{- end }}
{{- end -}}

{{/* clientConfig of each webhook. */}}
{{- define "rayshape.clientConfig" -}}
service:
  name: rayshape-webhook
  namespace: {{ .Release.Namespace }}
  path: /mutate
  port: 443
{{- if eq .Values.certificates.mode "self-managed" }}
caBundle: {{ .Values.certificates.caBundle | quote }}
{{- end }}
{{- end -}}

{{- define "rayshape.webhookCommon" -}}
failurePolicy: {{ .Values.webhook.failurePolicy }}
matchPolicy: Equivalent
sideEffects: None
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
reinvocationPolicy: IfNeeded
admissionReviewVersions:
- v1
{{- end -}}
