{{- define "kiln.name" -}}{{ .Release.Name }}-controller{{- end -}}
{{- define "kiln.serviceAccount" -}}{{ default (include "kiln.name" .) .Values.serviceAccount.name }}{{- end -}}
{{- define "kiln.labels" -}}
app.kubernetes.io/name: kiln-controller
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "kiln.selector" -}}
app.kubernetes.io/name: kiln-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
