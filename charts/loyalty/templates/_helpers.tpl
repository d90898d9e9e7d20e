{{/* Names. */}}
{{- define "loyalty.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; components append `-gateway`, `-engine`, `-migrate` (≤ 63). */}}
{{- define "loyalty.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "loyalty.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "loyalty.labels" -}}
helm.sh/chart: {{ include "loyalty.chart" . }}
{{ include "loyalty.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loyalty
{{- end -}}

{{- define "loyalty.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loyalty.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: (dict "ctx" $ "component" "gateway"). */}}
{{- define "loyalty.componentLabels" -}}
{{ include "loyalty.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loyalty.componentSelectorLabels" -}}
{{ include "loyalty.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loyalty.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "loyalty.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "loyalty.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The chart's own Secret (admin key, PII key ring, store and Redis URLs not taken from existing
secrets).
*/}}
{{- define "loyalty.secretName" -}}
{{- include "loyalty.fullname" . -}}
{{- end -}}

{{/* Whether the chart's Secret holds anything. */}}
{{- define "loyalty.ownSecret" -}}
{{- if or (not .Values.adminKey.existingSecret) (not .Values.piiKeys.existingSecret) (not .Values.redis.existingSecret) (and (eq .Values.store.type "postgres") (not .Values.store.postgres.existingSecret)) -}}
true
{{- end -}}
{{- end -}}

{{/*
The admin key the chart's Secret holds: the value given, else the one already in the release's
Secret (lookup: kept across upgrades), else a new random one.
*/}}
{{- define "loyalty.adminKeyValue" -}}
{{- if .Values.adminKey.value -}}
{{- .Values.adminKey.value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "loyalty.secretName" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "admin-key") -}}
{{- index $existing.data "admin-key" | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The PII key ring (LOYALTY_PII_KEYS) the chart's Secret holds: the value given, else the one
already in the release's Secret (lookup: kept across upgrades, since a new ring could not open
what the old one sealed), else a new ring of one key, `chart:<32 random bytes in base64>`.
*/}}
{{- define "loyalty.piiKeysValue" -}}
{{- if .Values.piiKeys.value -}}
{{- .Values.piiKeys.value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "loyalty.secretName" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "pii-keys") -}}
{{- index $existing.data "pii-keys" | b64dec -}}
{{- else -}}
{{- printf "chart:%s" (randBytes 32) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Checks of what the schema cannot express (relations between values), with a message naming the
value to change. Included by every template that renders a workload.
*/}}
{{- define "loyalty.validate" -}}
{{- $v := .Values -}}
{{- if gt (int $v.engine.replicas) (int $v.partitions) -}}
{{- fail (printf "engine.replicas (%d) is above partitions (%d): a partition is owned by one engine, so an engine without one applies nothing and never becomes ready (/readyz 503). Set engine.replicas to at most %d, or raise partitions before the topic is created" (int $v.engine.replicas) (int $v.partitions) (int $v.partitions)) -}}
{{- end -}}
{{- if and (not $v.adminKey.existingSecret) (not $v.adminKey.value) (not $v.adminKey.generate) -}}
{{- fail "an admin key is required: `loyalty gateway` and `loyalty engine` refuse to start without LOYALTY_ADMIN_KEY. Set adminKey.existingSecret (a Secret of yours, key adminKey.existingSecretKey), adminKey.value, or adminKey.generate=true" -}}
{{- end -}}
{{- if eq (trim $v.adminKey.value) "dev-admin-key" -}}
{{- fail "adminKey.value is the dev default `dev-admin-key`, which every process but `loyalty dev` refuses: use a secret of your own (adminKey.existingSecret)" -}}
{{- end -}}
{{- if and $v.adminKey.value (lt (len (trim $v.adminKey.value)) 8) -}}
{{- fail "adminKey.value must be at least 8 characters" -}}
{{- end -}}
{{- if and (not $v.piiKeys.existingSecret) (not $v.piiKeys.value) (not $v.piiKeys.generate) -}}
{{- fail "a key ring for members' personal data is required: `loyalty gateway` and `loyalty engine` refuse to start without LOYALTY_PII_KEYS. Set piiKeys.existingSecret (a Secret of yours, key piiKeys.existingSecretKey), piiKeys.value (`id:base64key,...`; `loyalty privacy new-key ID` prints one), or piiKeys.generate=true" -}}
{{- end -}}
{{- if $v.piiKeys.value -}}
{{- $ids := list -}}
{{- range (splitList "," $v.piiKeys.value) -}}
{{- $entry := trim . -}}
{{- if $entry -}}
{{- $id := trim (first (splitList ":" $entry)) -}}
{{- if eq $id "dev" -}}
{{- fail "piiKeys.value has a key `dev:...`, the dev key ring's id, which every process but `loyalty dev` refuses: make a key of your own with `loyalty privacy new-key ID`" -}}
{{- else if not (contains ":" $entry) -}}
{{- fail "piiKeys.value has an entry without `id:`: each key of the ring is `id:base64key`, the entries separated by commas (`loyalty privacy new-key ID` prints one)" -}}
{{- else if not (regexMatch "^[A-Za-z0-9_-]{1,32}$" $id) -}}
{{- fail "piiKeys.value has a key id that is not 1 to 32 letters, digits, `-` or `_`" -}}
{{- else if not (regexMatch "^[^:]*:[ \t]*([A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=?|[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]=?)$" $entry) -}}
{{- fail (printf "piiKeys.value: the key `%s` is not exactly 32 bytes in base64 (43 characters, then `=` or nothing; `loyalty privacy new-key %s` prints one)" $id $id) -}}
{{- else if has $id $ids -}}
{{- fail (printf "piiKeys.value gives the key id `%s` twice: every key of the ring needs its own id" $id) -}}
{{- end -}}
{{- $ids = append $ids $id -}}
{{- end -}}
{{- end -}}
{{- if not $ids -}}
{{- fail "piiKeys.value holds no key: give `id:base64key[,id:base64key...]`, or leave it empty" -}}
{{- end -}}
{{- end -}}
{{- if not (trim $v.kafka.brokers) -}}
{{- fail "kafka.brokers is required (LOYALTY_KAFKA_BROKERS, host:port,...)" -}}
{{- end -}}
{{- if and $v.kafka.heartbeatMs (gt (mul (int $v.kafka.heartbeatMs) 3) (int $v.kafka.sessionTimeoutMs)) -}}
{{- fail (printf "kafka.heartbeatMs (%d) must be at most a third of kafka.sessionTimeoutMs (%d)" (int $v.kafka.heartbeatMs) (int $v.kafka.sessionTimeoutMs)) -}}
{{- end -}}
{{- if and (not $v.redis.existingSecret) (not $v.redis.url) -}}
{{- fail "Redis is required: set redis.url or redis.existingSecret" -}}
{{- end -}}
{{- if eq $v.store.type "postgres" -}}
{{- if and (not $v.store.postgres.existingSecret) (not $v.store.postgres.url) -}}
{{- fail "store.type=postgres needs store.postgres.url or store.postgres.existingSecret (e.g. a CloudNativePG cluster's `<cluster>-app` secret, key `uri`)" -}}
{{- end -}}
{{- else -}}
{{- if not (trim $v.store.scylla.nodes) -}}
{{- fail "store.type=scylla needs store.scylla.nodes (host:9042,...)" -}}
{{- end -}}
{{- end -}}
{{- $names := list $v.topics.commands $v.topics.deadLetter -}}
{{- if $v.topics.pos -}}
{{- $names = concat $names (list $v.topics.pos (printf "%s-dlq" $v.topics.pos)) -}}
{{- end -}}
{{- if ne (len $names) (len (uniq $names)) -}}
{{- fail (printf "topics must all differ (commands, deadLetter, pos and its `<pos>-dlq`): %v" $names) -}}
{{- end -}}
{{- $managed := list "LOYALTY_LISTEN" "LOYALTY_DATA_DIR" "LOYALTY_PARTITIONS" "LOYALTY_TOPIC" "LOYALTY_DEAD_LETTER_TOPIC" "LOYALTY_POS_TOPIC" "LOYALTY_KAFKA_BROKERS" "LOYALTY_KAFKA_REPLICATION" "LOYALTY_KAFKA_SESSION_TIMEOUT_MS" "LOYALTY_KAFKA_HEARTBEAT_MS" "LOYALTY_KAFKA_INSTANCE_ID" "LOYALTY_PASSIVATE_AFTER_SECS" "LOYALTY_CHECKPOINT_MS" "LOYALTY_MAX_BODY_BYTES" "LOYALTY_LOG_FORMAT" "RUST_LOG" "OTEL_EXPORTER_OTLP_ENDPOINT" "OTEL_TRACES_SAMPLER" "OTEL_TRACES_SAMPLER_ARG" "OTEL_RESOURCE_ATTRIBUTES" "LOYALTY_ADMIN_KEY" "LOYALTY_PII_KEYS" "LOYALTY_REDIS_URL" "LOYALTY_POSTGRES_URL" "LOYALTY_POSTGRES_POOL" "LOYALTY_SCYLLA_NODES" "LOYALTY_SCYLLA_KEYSPACE" "LOYALTY_SCYLLA_REPLICATION" "LOYALTY_HTTP_WORKERS" "LOYALTY_ENGINE_WORKERS" "POD_NAME" "POD_NAMESPACE" -}}
{{- range $k, $_ := $v.config.extraEnv -}}
{{- if has $k $managed -}}
{{- fail (printf "config.extraEnv sets %s, which the chart sets from its own values: set that value instead (see values.yaml)" $k) -}}
{{- end -}}
{{- end -}}
{{- range (concat $v.gateway.extraEnv $v.engine.extraEnv) -}}
{{- if has .name $managed -}}
{{- fail (printf "gateway.extraEnv or engine.extraEnv sets %s, which the chart sets from its own values: set that value instead (see values.yaml)" .name) -}}
{{- end -}}
{{- end -}}
{{- if and $v.gateway.autoscaling.enabled (gt (int $v.gateway.autoscaling.minReplicas) (int $v.gateway.autoscaling.maxReplicas)) -}}
{{- fail "gateway.autoscaling.minReplicas is above gateway.autoscaling.maxReplicas" -}}
{{- end -}}
{{- if lt (int $v.gateway.terminationGracePeriodSeconds) (add (int $v.gateway.preStopSleepSeconds) 30) -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must cover gateway.preStopSleepSeconds (%d) and the 30 s the gateway takes at most to finish its requests in flight" (int $v.gateway.terminationGracePeriodSeconds) (int $v.gateway.preStopSleepSeconds)) -}}
{{- end -}}
{{- end -}}

{{/* Env of every process: the ConfigMap, then the secrets. */}}
{{- define "loyalty.secretEnv" -}}
- name: LOYALTY_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default (include "loyalty.secretName" .) .Values.adminKey.existingSecret }}
      key: {{ ternary .Values.adminKey.existingSecretKey "admin-key" (not (empty .Values.adminKey.existingSecret)) }}
- name: LOYALTY_PII_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ default (include "loyalty.secretName" .) .Values.piiKeys.existingSecret }}
      key: {{ ternary .Values.piiKeys.existingSecretKey "pii-keys" (not (empty .Values.piiKeys.existingSecret)) }}
- name: LOYALTY_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "loyalty.secretName" .) .Values.redis.existingSecret }}
      key: {{ ternary .Values.redis.existingSecretKey "redis-url" (not (empty .Values.redis.existingSecret)) }}
{{ include "loyalty.storeEnv" (dict "ctx" . "secret" (include "loyalty.secretName" .)) }}
{{- end -}}

{{/* The store's connection env: (dict "ctx" $ "secret" <the chart's secret holding postgres-url>). */}}
{{- define "loyalty.storeEnv" -}}
{{- $v := .ctx.Values -}}
{{- if eq $v.store.type "postgres" -}}
- name: LOYALTY_POSTGRES_URL
  valueFrom:
    secretKeyRef:
      name: {{ default .secret $v.store.postgres.existingSecret }}
      key: {{ ternary $v.store.postgres.existingSecretKey "postgres-url" (not (empty $v.store.postgres.existingSecret)) }}
{{- if $v.store.postgres.pool }}
- name: LOYALTY_POSTGRES_POOL
  value: {{ $v.store.postgres.pool | int | quote }}
{{- end }}
{{- else -}}
- name: LOYALTY_SCYLLA_NODES
  value: {{ $v.store.scylla.nodes | quote }}
- name: LOYALTY_SCYLLA_KEYSPACE
  value: {{ $v.store.scylla.keyspace | quote }}
- name: LOYALTY_SCYLLA_REPLICATION
  value: {{ $v.store.scylla.replication | quote }}
{{- end -}}
{{- end -}}

{{/* Pod env every process gets from the downward API (logs, trace resource attributes). */}}
{{- define "loyalty.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- if .Values.tracing.endpoint }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME),service.instance.id=$(POD_NAME)"
{{- end }}
{{- end -}}

{{/* Checksums that roll the pods when their configuration changes. */}}
{{- define "loyalty.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ list .Values.adminKey .Values.piiKeys .Values.redis .Values.store | toJson | sha256sum }}
{{- end -}}

{{/*
topologySpreadConstraints and affinity of a component: (dict "ctx" $ "component" "gateway"
"affinity" <values> "revisionKey" "pod-template-hash"); revisionKey spreads each rollout's pods on
its own (a Deployment's pod-template-hash), empty for none.
*/}}
{{- define "loyalty.scheduling" -}}
{{- $s := .ctx.Values.scheduling -}}
{{- if $s.topologySpread.enabled }}
topologySpreadConstraints:
{{- range $s.topologySpread.topologyKeys }}
  - maxSkew: {{ $s.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $s.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "loyalty.componentSelectorLabels" (dict "ctx" $.ctx "component" $.component) | nindent 8 }}
    {{- if $.revisionKey }}
    matchLabelKeys:
      - {{ $.revisionKey }}
    {{- end }}
{{- end }}
{{- end }}
{{- if .affinity }}
affinity:
  {{- toYaml .affinity | nindent 2 }}
{{- else if eq $s.podAntiAffinity "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "loyalty.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | nindent 14 }}
{{- else if eq $s.podAntiAffinity "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "loyalty.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | nindent 12 }}
{{- end }}
{{- end -}}

{{/* The volumes every container writes to (the root filesystem is read-only). */}}
{{- define "loyalty.volumes" -}}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
  - name: data
    emptyDir:
      sizeLimit: 64Mi
{{- end -}}

{{- define "loyalty.volumeMounts" -}}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  - name: data
    mountPath: /var/lib/loyalty
{{- end -}}
