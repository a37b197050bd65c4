{{/* Labels on every object: the same as manifests/ (part-of), plus Helm's own. */}}
{{- define "rayshape.labels" -}}
app.kubernetes.io/part-of: rayshape
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels of a monitor: the chart's, and monitoring.labels beside them (a Prometheus
     may select monitors by label: kube-prometheus-stack's by release=<its release>). */}}
{{- define "rayshape.monitorLabels" -}}
{{- $root := index . 0 -}}
{{- $own := fromYaml (include "rayshape.labels" $root) -}}
{{- $_ := set $own "app.kubernetes.io/name" (index . 1) -}}
{{- toYaml (merge $own ($root.Values.monitoring.labels | default dict)) -}}
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

{{- define "rayshape.metricsPort" -}}
{{- .Values.metricsPort | default 9090 | int -}}
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
{{- if eq .Values.certificates.mode "cert-manager" -}}
{{- /* Hours only: cert-manager refuses renewBefore >= duration, and the caBundle follows a
       renewed CA only if the serving certificate renews before the old CA ends. */ -}}
{{- $h := dict -}}
{{- range $k := list "caDuration" "caRenewBefore" "duration" "renewBefore" -}}
{{- $v := toString (get $.Values.certificates.certManager $k) -}}
{{- if not (regexMatch "^[0-9]+h$" $v) -}}
{{- fail (printf "certificates.certManager.%s must be a number of hours like 2160h, not %q" $k $v) -}}
{{- end -}}
{{- $_ := set $h $k (trimSuffix "h" $v | atoi) -}}
{{- end -}}
{{- if not (lt $h.caRenewBefore $h.caDuration) -}}
{{- fail (printf "certificates.certManager.caRenewBefore (%dh) must be less than caDuration (%dh)" $h.caRenewBefore $h.caDuration) -}}
{{- end -}}
{{- if not (lt $h.duration $h.caRenewBefore) -}}
{{- fail (printf "certificates.certManager.caRenewBefore (%dh) must be more than duration (%dh), so that the serving certificate renews, with the renewed CA, before the old CA ends" $h.caRenewBefore $h.duration) -}}
{{- end -}}
{{- if not (lt $h.renewBefore $h.duration) -}}
{{- fail (printf "certificates.certManager.renewBefore (%dh) must be less than duration (%dh)" $h.renewBefore $h.duration) -}}
{{- end -}}
{{- end -}}
{{- if eq (include "rayshape.port" .) (include "rayshape.metricsPort" .) -}}
{{- fail (printf "port and metricsPort are both %s: the webhook cannot listen twice on one port" (include "rayshape.port" .)) -}}
{{- end -}}
{{- /* On the node's network, gke's default port is the kubelet's own. */ -}}
{{- if and (eq .Values.provider "gke") .Values.hostNetwork (not .Values.port) -}}
{{- fail "provider gke with hostNetwork: the webhook would listen on the node's port 10250, which is the kubelet's; set `port` to a free port on the nodes, and let the control plane reach it (a private cluster needs a firewall rule: docs/install.md)" -}}
{{- end -}}
{{- end -}}

{{/* The webhook configuration's namespaceSelector, the same for each webhook. It follows
     settings.namespaces, so that the API server never sends (nor, with Fail, refuses while
     the webhook is down) a pod the webhook would only admit unchanged. */}}
{{- define "rayshape.namespaceSelector" -}}
{{- $settings := .Values.settings | default dict -}}
matchExpressions:
- key: kubernetes.io/metadata.name
  operator: NotIn
  values:
  {{- range (concat (list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace) .Values.webhook.excludeNamespaces (dig "namespaces" "exclude" list $settings) | uniq) }}
  - {{ . | quote }}
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
{{- with (dig "namespaces" "include" list $settings) }}
- key: kubernetes.io/metadata.name
  operator: In
  values:
  {{- range . }}
  - {{ . | quote }}
  {{- end }}
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
