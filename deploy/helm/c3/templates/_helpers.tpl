{{/*
Shared names, labels, configuration and pod fragments for the C3 platform chart.
*/}}

{{- define "c3.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "c3.fullname" -}}
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

{{/* Name of one component's objects: (dict "ctx" $ "component" "api") */}}
{{- define "c3.componentName" -}}
{{- printf "%s-%s" (include "c3.fullname" .ctx | trunc 55 | trimSuffix "-") .component }}
{{- end }}

{{- define "c3.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "c3.labels" -}}
helm.sh/chart: {{ include "c3.chart" . }}
app.kubernetes.io/name: {{ include "c3.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: c3
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "api") */}}
{{- define "c3.componentLabels" -}}
{{ include "c3.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of one component (immutable in a Deployment): (dict "ctx" $ "component" "api") */}}
{{- define "c3.selectorLabels" -}}
app.kubernetes.io/name: {{ include "c3.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "c3.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "c3.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "c3.configMapName" -}}
{{- include "c3.componentName" (dict "ctx" . "component" "config") }}
{{- end }}

{{- define "c3.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/* Required values ---------------------------------------------------------------- */}}

{{- define "c3.secretName" -}}
{{- required "existingSecret is required: name an existing Secret with the keys C3_DATABASE_URL, C3_REDIS_URL, C3_SECRET_KEY and C3_OPERATOR_TOKEN (this chart never creates secrets), e.g. --set existingSecret=c3-secrets" .Values.existingSecret }}
{{- end }}

{{- define "c3.baseDomain" -}}
{{- $domain := required "baseDomain is required: the DNS zone for tenant homeservers, e.g. --set baseDomain=chat.example.com (tenant server names are immutable, so there is no default)" .Values.baseDomain }}
{{- $domain | lower | trimSuffix "." }}
{{- end }}

{{- define "c3.proxyPublicUrl" -}}
{{- $url := default (printf "https://%s" (include "c3.baseDomain" .)) .Values.proxy.publicUrl | trimSuffix "/" }}
{{- if not (or (hasPrefix "https://" $url) (hasPrefix "http://" $url)) }}
{{- fail (printf "proxy.publicUrl must start with https:// or http://, got %q" $url) }}
{{- end }}
{{- $url }}
{{- end }}

{{- define "c3.apiHost" -}}
{{- default (printf "api.%s" (include "c3.baseDomain" .)) .Values.ingress.api.host | lower }}
{{- end }}

{{/* The secret settings: the only place they enter a pod, always from existingSecret. */}}
{{- define "c3.secretKeys" -}}
C3_DATABASE_URL C3_REDIS_URL C3_SECRET_KEY C3_OPERATOR_TOKEN
{{- end }}

{{/* Secret settings that extraConfig refuses (the optional ones included). */}}
{{- define "c3.refusedInConfig" -}}
{{ include "c3.secretKeys" . }} C3_TENANT_DATABASE_URL
{{- end }}

{{/*
Non-secret settings as a YAML map (sorted keys, quoted values). Used as the ConfigMap's data,
inlined into the migration hook (which runs before the ConfigMap exists), and hashed into
pod annotations so a change rolls the Deployments.
*/}}
{{- define "c3.configData" -}}
{{- include "c3.configData.lines" . | trim }}
{{- end }}

{{- define "c3.configData.lines" -}}
{{- /* Every manifest includes this, so the two required values are checked first, in order. */}}
{{- $_ := include "c3.secretName" . }}
{{- $_ = include "c3.baseDomain" . }}
{{- if not (has .Values.backend (list "kubernetes" "local")) }}
{{- fail (printf "backend must be \"kubernetes\" or \"local\", got %q" (toString .Values.backend)) }}
{{- end }}
{{- $cfg := dict
  "C3_MODE" "production"
  "C3_BASE_DOMAIN" (include "c3.baseDomain" .)
  "C3_PROXY_PUBLIC_URL" (include "c3.proxyPublicUrl" .)
  "C3_API_HOST" "0.0.0.0"
  "C3_API_PORT" "8000"
  "C3_PROXY_HOST" "0.0.0.0"
  "C3_PROXY_PORT" "8080"
  "C3_BACKEND" .Values.backend
  "C3_REDIS_NAMESPACE" .Values.redisNamespace
  "C3_DATA_DIR" "/var/lib/c3"
  "HOME" "/tmp"
  "PYTHONUNBUFFERED" "1"
  "PYTHONDONTWRITEBYTECODE" "1"
}}
{{- with .Values.proxy.trustedProxies }}
{{- $_ := set $cfg "C3_PROXY_TRUSTED_PROXIES" (join "," .) }}
{{- end }}
{{- if .Values.ingress.enabled }}
{{- /* URLs the API hands out (Locations, export links) name its public https address. */}}
{{- $_ := set $cfg "C3_API_PUBLIC_URL" (printf "https://%s" (include "c3.apiHost" .)) }}
{{- end }}
{{- $secretKeys := splitList " " (include "c3.refusedInConfig" .) }}
{{- range $key, $value := .Values.extraConfig }}
{{- if has $key $secretKeys }}
{{- fail (printf "extraConfig.%s is a secret setting: put it in the Secret named by existingSecret, never in values" $key) }}
{{- end }}
{{- if hasKey $cfg $key }}
{{- fail (printf "extraConfig.%s is set by the chart itself; use the dedicated value instead" $key) }}
{{- end }}
{{- $_ := set $cfg $key (toString $value) }}
{{- end }}
{{- range $key, $value := $cfg }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* env entries for the secret settings, each from existingSecret. */}}
{{- define "c3.secretEnv" -}}
{{- include "c3.secretEnv.lines" . | trim }}
{{- end }}

{{- define "c3.secretEnv.lines" -}}
{{- $secret := include "c3.secretName" . }}
{{- range splitList " " (include "c3.secretKeys" .) }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
{{- end }}
{{- if .Values.tenantDatabaseUrlFromSecret }}
- name: C3_TENANT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: C3_TENANT_DATABASE_URL
{{- end }}
{{- end }}

{{/* Pod template annotations: config checksum plus user annotations. */}}
{{- define "c3.podAnnotations" -}}
checksum/config: {{ include "c3.configData" . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Scheduling and identity shared by every platform pod. */}}
{{- define "c3.podCommon" -}}
serviceAccountName: {{ include "c3.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The writable /tmp every container gets (the root filesystem is read-only). */}}
{{- define "c3.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "c3.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}
