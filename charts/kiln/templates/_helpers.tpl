{{/* Names of the release's objects. */}}
{{- define "kiln.controller" -}}{{ .Release.Name }}-controller{{- end -}}
{{- define "kiln.gateway" -}}{{ .Release.Name }}-gateway{{- end -}}
{{- define "kiln.controller.serviceAccount" -}}
{{ default (include "kiln.controller" .) .Values.controller.serviceAccount.name }}
{{- end -}}
{{- define "kiln.gateway.serviceAccount" -}}
{{ default (include "kiln.gateway" .) .Values.gateway.serviceAccount.name }}
{{- end -}}

{{/* The chart's CA: signs a generated server certificate and, unless
tls.clientCA.existingSecret names another, the client certificates. */}}
{{- define "kiln.chartCA" -}}{{ .Release.Name }}-ca{{- end -}}
{{/* The builder CA (builderTLS.enabled): signs kilnd's server certificates
and the gateway's client certificate for reaching them, nothing else. */}}
{{- define "kiln.builderCA" -}}{{ .Release.Name }}-builder-ca{{- end -}}
{{- define "kiln.gatewayBuilderTLS" -}}{{ .Release.Name }}-gateway-builder-tls{{- end -}}
{{- define "kiln.clientCA" -}}
{{ default (include "kiln.chartCA" .) .Values.tls.clientCA.existingSecret }}
{{- end -}}
{{/* The kubernetes.io/tls Secret the gateway serves with. */}}
{{- define "kiln.serverTLS" -}}
{{ default (printf "%s-gateway-tls" .Release.Name) .Values.tls.existingSecret }}
{{- end -}}
{{/* existingSecret, certManager or generated. */}}
{{- define "kiln.tlsMode" -}}
{{- if .Values.tls.existingSecret -}}existingSecret
{{- else if .Values.tls.certManager.enabled -}}certManager
{{- else -}}generated
{{- end -}}
{{- end -}}
{{/* Whether the chart makes its CA: for a generated server certificate, or
as the client CA. */}}
{{- define "kiln.needsChartCA" -}}
{{- if or (eq (include "kiln.tlsMode" .) "generated") (not .Values.tls.clientCA.existingSecret) -}}true{{- end -}}
{{- end -}}

{{- define "kiln.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* Labels: the common ones, then the component's (an argument:
(list $ "gateway")). */}}
{{- define "kiln.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ $root.Chart.Name }}-{{ $root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
{{ include "kiln.selector" . }}
{{- end -}}
{{- define "kiln.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: kiln
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The namespace of a pool (an entry of .Values.pools): (list $ pool). */}}
{{- define "kiln.pool.namespace" -}}
{{ default (index . 0).Release.Namespace (index . 1).namespace }}
{{- end -}}

{{/* NAME.NAMESPACE of the default pool, or nothing. */}}
{{- define "kiln.defaultPool" -}}
{{- if .Values.gateway.defaultPool -}}
{{ .Values.gateway.defaultPool }}
{{- else if .Values.pools -}}
{{- $pool := first .Values.pools -}}
{{ $pool.name }}.{{ include "kiln.pool.namespace" (list . $pool) }}
{{- end -}}
{{- end -}}

{{/* The DNS names of the gateway's server certificate, sorted, as JSON:
the Service's names, NAME and NAME.NAMESPACE of each pool, *.NAMESPACE of
every namespace pools may live in (a Builder applied later is reachable as
NAME.NAMESPACE), and tls.dnsNames. buildx checks the certificate against
the pool name it sends (`servername`), not against the address. */}}
{{- define "kiln.serverNames" -}}
{{- $ns := .Release.Namespace -}}
{{- $svc := include "kiln.gateway" . -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) -}}
{{- $namespaces := concat (list $ns) .Values.gateway.watch.namespaces -}}
{{- range .Values.pools -}}
{{- $poolNs := include "kiln.pool.namespace" (list $ .) -}}
{{- $names = concat $names (list .name (printf "%s.%s" .name $poolNs)) -}}
{{- $namespaces = append $namespaces $poolNs -}}
{{- end -}}
{{- range $namespaces -}}
{{- $names = append $names (printf "*.%s" .) -}}
{{- end -}}
{{- concat $names .Values.tls.dnsNames | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* What values.schema.json cannot check, with messages that say what to
change. */}}
{{- define "kiln.validate" -}}
{{- $watched := .Values.gateway.watch.namespaces -}}
{{- if $watched -}}
{{- range .Values.pools -}}
{{- $poolNs := include "kiln.pool.namespace" (list $ .) -}}
{{- if not (has $poolNs $watched) -}}
{{- fail (printf "pools: %s lives in namespace %s, which gateway.watch.namespaces (%s) leaves out: the gateway would never serve it; add the namespace" .name $poolNs (join ", " $watched)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $seen := dict -}}
{{- range .Values.pools -}}
{{- $key := printf "%s.%s" .name (include "kiln.pool.namespace" (list $ .)) -}}
{{- if hasKey $seen $key -}}
{{- fail (printf "pools: %s is listed twice" $key) -}}
{{- end -}}
{{- $_ := set $seen $key true -}}
{{- end -}}
{{- end -}}
