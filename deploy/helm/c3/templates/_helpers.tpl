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

{{/* ServiceAccount of api, proxy and beat: never a token. */}}
{{- define "c3.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "c3.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ServiceAccount of the worker: the only one whose token is mounted (kubernetes backend). */}}
{{- define "c3.workerServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "c3.componentName" (dict "ctx" . "component" "worker")) .Values.serviceAccount.worker.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.worker.name }}
{{- end }}
{{- end }}

{{/* "true" when the worker talks to the Kubernetes API (mounts its token, gets RBAC). */}}
{{- define "c3.workerUsesKubernetes" -}}
{{- if eq .Values.backend "kubernetes" }}true{{- end }}
{{- end }}

{{/* "true" when C3_TENANT_DATABASE_URL comes from the Secret (always on kubernetes). */}}
{{- define "c3.tenantDatabaseFromSecret" -}}
{{- if or .Values.tenantDatabaseUrlFromSecret (eq .Values.backend "kubernetes") }}true{{- end }}
{{- end }}

{{/* "true" when the object store credentials come from the Secret. */}}
{{- define "c3.objectStoreCredentialsFromSecret" -}}
{{- if and .Values.objectStore.url .Values.objectStore.credentialsFromSecret }}true{{- end }}
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
{{ include "c3.secretKeys" . }} C3_TENANT_DATABASE_URL C3_OBJECT_STORE_ACCESS_KEY_ID C3_OBJECT_STORE_SECRET_ACCESS_KEY
{{- end }}

{{/* Settings that have their own value (extraConfig refuses them even when the value is empty). */}}
{{- define "c3.settingsFromValues" -}}
C3_LOG_FORMAT C3_OBJECT_STORE_URL C3_OBJECT_STORE_BUCKET C3_OBJECT_STORE_REGION C3_OBJECT_STORE_PREFIX C3_KUBERNETES_SYNAPSE_IMAGE C3_KUBERNETES_RELEASE C3_KUBERNETES_PLATFORM_NAMESPACE C3_KUBERNETES_STORAGE_CLASS C3_KUBERNETES_DATABASE_CIDR C3_KUBERNETES_CLUSTER_DOMAIN C3_KUBERNETES_MONITORING_NAMESPACE C3_PROXY_SPOOL_DIR C3_PROXY_SPOOL_BUDGET_BYTES C3_PROXY_METRICS_HOST C3_PROXY_METRICS_PORT C3_WORKER_METRICS_HOST C3_WORKER_METRICS_PORT
{{- end }}

{{/*
The metrics listener of the proxy or the worker: its port when observability.scrape is on,
else nothing (no listener). (dict "ctx" $ "component" "proxy")
*/}}
{{- define "c3.metricsPort" -}}
{{- $scrape := .ctx.Values.observability.scrape }}
{{- if $scrape.enabled }}
{{- if eq .component "proxy" }}{{ $scrape.proxyPort }}{{ else if eq .component "worker" }}{{ $scrape.workerPort }}{{ end }}
{{- end }}
{{- end }}

{{/* env entries that open that listener on every address of the pod (see c3.metricsPort). */}}
{{- define "c3.metricsEnv" -}}
{{- $port := include "c3.metricsPort" . }}
{{- if $port }}
{{- $prefix := printf "C3_%s_METRICS" (upper .component) }}
# The Prometheus listener (GET /metrics): container port `metrics`, never in a Service.
- name: {{ $prefix }}_HOST
  value: "0.0.0.0"
- name: {{ $prefix }}_PORT
  value: {{ $port | quote }}
{{- end }}
{{- end }}

{{/* The container port entry of that listener. */}}
{{- define "c3.metricsContainerPort" -}}
{{- $port := include "c3.metricsPort" . }}
{{- if $port }}
- name: metrics
  containerPort: {{ $port }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* Where the proxy spools bodies, and its budget in bytes (below the volume's sizeLimit). */}}
{{- define "c3.proxySpoolDir" -}}
/var/spool/c3-proxy
{{- end }}

{{- define "c3.proxySpoolBudgetBytes" -}}
{{- $spool := .Values.proxy.spool }}
{{- mul (int $spool.largestUploadMiB) (int $spool.concurrentUploads) 1048576 }}
{{- end }}

{{- define "c3.proxySpoolSizeLimit" -}}
{{- $spool := .Values.proxy.spool }}
{{- printf "%dMi" (add (mul (int $spool.largestUploadMiB) (int $spool.concurrentUploads)) (int $spool.headroomMiB)) }}
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
{{- if and (eq .Values.backend "kubernetes") (not .Values.kubernetes.databaseCidr) }}
{{- fail "kubernetes.databaseCidr is required with backend kubernetes: the address (CIDR) of the platform PostgreSQL, which every tenant's Synapse reaches through its NetworkPolicy, e.g. --set kubernetes.databaseCidr=10.0.0.5/32" }}
{{- end }}
{{- if and .Values.objectStore.url (not .Values.objectStore.bucket) }}
{{- fail "objectStore.bucket is required when objectStore.url is set" }}
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
  "C3_LOG_FORMAT" .Values.logFormat
  "C3_WAKE_LANE" (ternary "true" "false" .Values.worker.wakeLane.enabled)
  "HOME" "/tmp"
  "PYTHONUNBUFFERED" "1"
  "PYTHONDONTWRITEBYTECODE" "1"
}}
{{- if eq .Values.backend "kubernetes" }}
{{- $_ := set $cfg "C3_KUBERNETES_RELEASE" .Release.Name }}
{{- $_ = set $cfg "C3_KUBERNETES_PLATFORM_NAMESPACE" .Release.Namespace }}
{{- $_ = set $cfg "C3_KUBERNETES_DATABASE_CIDR" .Values.kubernetes.databaseCidr }}
{{- $_ = set $cfg "C3_KUBERNETES_CLUSTER_DOMAIN" .Values.kubernetes.clusterDomain }}
{{- with .Values.kubernetes.synapseImage }}
{{- $_ = set $cfg "C3_KUBERNETES_SYNAPSE_IMAGE" . }}
{{- end }}
{{- with .Values.kubernetes.storageClass }}
{{- $_ = set $cfg "C3_KUBERNETES_STORAGE_CLASS" . }}
{{- end }}
{{- /* Tenant NetworkPolicies let Prometheus reach each Synapse's metrics port from there. */}}
{{- with .Values.observability.prometheusNamespace }}
{{- $_ = set $cfg "C3_KUBERNETES_MONITORING_NAMESPACE" . }}
{{- end }}
{{- /* Tenant pods push the application service's transactions to the API's Service. */}}
{{- if not (hasKey .Values.extraConfig "C3_CONTEXTS_APPSERVICE_URL") }}
{{- $api := include "c3.componentName" (dict "ctx" . "component" "api") }}
{{- $_ = set $cfg "C3_CONTEXTS_APPSERVICE_URL" (printf "http://%s.%s.svc.%s:%v" $api .Release.Namespace .Values.kubernetes.clusterDomain .Values.api.service.port) }}
{{- end }}
{{- end }}
{{- with .Values.objectStore.url }}
{{- $_ := set $cfg "C3_OBJECT_STORE_URL" . }}
{{- $_ = set $cfg "C3_OBJECT_STORE_BUCKET" $.Values.objectStore.bucket }}
{{- with $.Values.objectStore.region }}
{{- $_ = set $cfg "C3_OBJECT_STORE_REGION" . }}
{{- end }}
{{- with $.Values.objectStore.prefix }}
{{- $_ = set $cfg "C3_OBJECT_STORE_PREFIX" . }}
{{- end }}
{{- end }}
{{- with .Values.proxy.trustedProxies }}
{{- $_ := set $cfg "C3_PROXY_TRUSTED_PROXIES" (join "," .) }}
{{- end }}
{{- if .Values.ingress.enabled }}
{{- /* URLs the API hands out (Locations, export links) name its public https address. */}}
{{- $_ := set $cfg "C3_API_PUBLIC_URL" (printf "https://%s" (include "c3.apiHost" .)) }}
{{- end }}
{{- $secretKeys := splitList " " (include "c3.refusedInConfig" .) }}
{{- $valueKeys := splitList " " (include "c3.settingsFromValues" .) }}
{{- range $key, $value := .Values.extraConfig }}
{{- if has $key $secretKeys }}
{{- fail (printf "extraConfig.%s is a secret setting: put it in the Secret named by existingSecret, never in values" $key) }}
{{- end }}
{{- if or (hasKey $cfg $key) (has $key $valueKeys) }}
{{- fail (printf "extraConfig.%s is set by the chart itself; use the dedicated value instead" $key) }}
{{- end }}
{{- $_ := set $cfg $key (toString $value) }}
{{- end }}
{{- range $key, $value := $cfg }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/*
env entries for the secret settings, each from existingSecret: (dict "ctx" $ "component" "api").
Every service needs the four base settings (production mode refuses to start without them);
the tenant database's admin URL only the worker (it creates tenant databases, dumps them),
the object store credentials only the worker (writes archives) and the API (signs links).
*/}}
{{- define "c3.secretEnv" -}}
{{- include "c3.secretEnv.lines" . | trim }}
{{- end }}

{{- define "c3.secretEnv.lines" -}}
{{- $component := .component }}
{{- with .ctx }}
{{- $secret := include "c3.secretName" . }}
{{- $keys := splitList " " (include "c3.secretKeys" .) }}
{{- if and (eq $component "worker") (include "c3.tenantDatabaseFromSecret" .) }}
{{- $keys = append $keys "C3_TENANT_DATABASE_URL" }}
{{- end }}
{{- if and (has $component (list "worker" "api")) (include "c3.objectStoreCredentialsFromSecret" .) }}
{{- $keys = concat $keys (list "C3_OBJECT_STORE_ACCESS_KEY_ID" "C3_OBJECT_STORE_SECRET_ACCESS_KEY") }}
{{- end }}
{{- range $keys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod template annotations: config checksum plus user annotations. */}}
{{- define "c3.podAnnotations" -}}
checksum/config: {{ include "c3.configData" . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Scheduling and identity shared by every platform pod: (dict "ctx" $ "component" "api"). Only
the worker (with the kubernetes backend) gets its ServiceAccount token.
*/}}
{{- define "c3.podCommon" -}}
{{- with .ctx }}
{{- if eq $.component "worker" }}
serviceAccountName: {{ include "c3.workerServiceAccountName" . }}
automountServiceAccountToken: {{ include "c3.workerUsesKubernetes" . | eq "true" }}
{{- else }}
serviceAccountName: {{ include "c3.serviceAccountName" . }}
automountServiceAccountToken: false
{{- end }}
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
