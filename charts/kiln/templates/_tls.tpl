{{- /*
"kiln.tls": the chart's CA and the gateway's generated server certificate,
worked out once per render and kept in .Values._kilnTLS, because two
templates need the same random keys: tls.yaml writes them into Secrets, and
the gateway's pod template carries a checksum of the server certificate (the
gateway reads it at start, so a certificate issued again must roll it).

Both are kept across upgrades: `lookup` finds the Secrets of the installed
release and they are written back unchanged. The server certificate is issued
again (from the same CA, so clients keep working) when its DNS names change,
when the CA in the Secret is not the one that signed it, or within 30 days of
its end. `helm template` and `helm install --dry-run` without a cluster have
nothing to look up: what they print is a fresh CA each time.

The builder CA (builderTLS.enabled) is kept the same way; only the
controller reads it.

.Values._kilnTLS: ca (.Cert, .Key: PEM; absent when the chart makes no CA),
builderCA (.Cert, .Key: PEM; absent unless builderTLS.enabled),
and, for a generated server certificate, crt, key (base64), names (the DNS
names, comma-separated) and renewAfter (Unix seconds).
*/ -}}
{{- define "kiln.tls" -}}
{{- if not (hasKey .Values "_kilnTLS") -}}
{{- $tls := dict -}}
{{- if include "kiln.needsChartCA" . -}}
{{- $data := dig "data" dict (lookup "v1" "Secret" .Release.Namespace (include "kiln.chartCA" .)) -}}
{{- if and (index $data "tls.crt") (index $data "tls.key") -}}
{{- $_ := set $tls "ca" (buildCustomCert (index $data "tls.crt") (index $data "tls.key")) -}}
{{- else -}}
{{- $_ := set $tls "ca" (genCAWithKey (printf "Kiln CA (%s.%s)" .Release.Name .Release.Namespace) (int .Values.tls.generated.caDays) (genPrivateKey "ecdsa")) -}}
{{- end -}}
{{- end -}}
{{- if eq (include "kiln.tlsMode" .) "generated" -}}
{{- $names := include "kiln.serverNames" . | fromJsonArray -}}
{{- $_ := set $tls "names" (join "," $names) -}}
{{- $now := now | unixEpoch | atoi -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace (include "kiln.serverTLS" .) -}}
{{- $data := dig "data" dict $found -}}
{{- $annotations := dig "metadata" "annotations" dict $found -}}
{{- $caCrt := $tls.ca.Cert | b64enc -}}
{{- $renewAfter := index $annotations "kiln.dev/renew-after" | default "0" -}}
{{- if and (index $data "tls.crt") (index $data "tls.key") (eq (index $data "ca.crt" | default "") $caCrt) (eq (index $annotations "kiln.dev/dns-names" | default "") $tls.names) (lt $now (atoi $renewAfter)) -}}
{{- $_ := set $tls "crt" (index $data "tls.crt") -}}
{{- $_ := set $tls "key" (index $data "tls.key") -}}
{{- $_ := set $tls "renewAfter" $renewAfter -}}
{{- else -}}
{{- $days := int .Values.tls.generated.certDays -}}
{{- $cert := genSignedCertWithKey (include "kiln.gateway" .) (list) $names $days $tls.ca (genPrivateKey "ecdsa") -}}
{{- $_ := set $tls "crt" ($cert.Cert | b64enc) -}}
{{- $_ := set $tls "key" ($cert.Key | b64enc) -}}
{{- $_ := set $tls "renewAfter" (add $now (mul (sub $days 30) 86400) | toString) -}}
{{- end -}}
{{- end -}}
{{- if .Values.builderTLS.enabled -}}
{{- $data := dig "data" dict (lookup "v1" "Secret" .Release.Namespace (include "kiln.builderCA" .)) -}}
{{- if and (index $data "tls.crt") (index $data "tls.key") -}}
{{- $_ := set $tls "builderCA" (buildCustomCert (index $data "tls.crt") (index $data "tls.key")) -}}
{{- else -}}
{{- $_ := set $tls "builderCA" (genCAWithKey (printf "Kiln builder CA (%s.%s)" .Release.Name .Release.Namespace) (int .Values.builderTLS.caDays) (genPrivateKey "ecdsa")) -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "_kilnTLS" $tls -}}
{{- end -}}
{{- end -}}
