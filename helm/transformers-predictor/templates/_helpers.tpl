{{/* Chart name, overridable. */}}
{{- define "tp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: the release name, or release-chart when the release name does not
contain the chart name. 45 characters at most: KServe derives longer names from
the InferenceService name (<name>-predictor, Services, HPA).
*/}}
{{- define "tp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* InferenceService name = the model name the server registers ({{.Name}}). */}}
{{- define "tp.isvcName" -}}
{{- $name := default (include "tp.fullname" .) .Values.inferenceService.name -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "InferenceService name %q must start with a letter and hold only lowercase letters, digits and '-' (KServe's rule); set inferenceService.name" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "tp.runtimeName" -}}
{{- default (include "tp.fullname" .) .Values.runtime.name -}}
{{- end -}}

{{- define "tp.configMapName" -}}
{{- printf "%s-model-config" (include "tp.isvcName" .) -}}
{{- end -}}

{{- define "tp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "tp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tp.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Knative (Serverless) or Standard (raw Deployment). */}}
{{- define "tp.knative" -}}
{{- if eq .Values.deploymentMode "Knative" -}}true{{- end -}}
{{- end -}}

{{/*
resources (root: the chart context; gpu: add gpu.count GPUs to the limits).
Quantities are quoted: the API types them as strings.
*/}}
{{- define "tp.resources" -}}
{{- $v := .root.Values -}}
{{- $limits := deepCopy (default dict $v.resources.limits) -}}
{{- if and .gpu (gt (int $v.gpu.count) 0) -}}
{{- $_ := set $limits $v.gpu.resourceName (toString (int $v.gpu.count)) -}}
{{- end -}}
{{- with $v.resources.requests }}
requests:
  {{- range $k, $q := . }}
  {{ $k }}: {{ $q | toString | quote }}
  {{- end }}
{{- end }}
{{- with $limits }}
limits:
  {{- range $k, $q := . }}
  {{ $k }}: {{ $q | toString | quote }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* model-config.yaml as the predictor reads it (TorchServe layout). */}}
{{- define "tp.modelConfig" -}}
{{- $doc := deepCopy (default dict .Values.batching) -}}
{{- $handler := merge (dict "mode" .Values.mode) (deepCopy (default dict .Values.handler)) -}}
{{- $_ := set $doc "handler" $handler -}}
{{- with .Values.pt2 }}{{- $_ := set $doc "pt2" . -}}{{- end }}
{{- with .Values.limits }}{{- $_ := set $doc "limits" . -}}{{- end }}
{{- toYaml $doc -}}
{{- end -}}

{{/*
Checkov skip annotations (checkov.io/skipN: ID=reason) for what these objects
cannot satisfy by themselves. Reasons must not contain "=".
*/}}
{{- define "tp.checkovSkips" -}}
{{- $skips := list -}}
{{- if and .pod (not .root.Values.image.digest) -}}
{{- $skips = append $skips "CKV_K8S_43=the image is pulled by tag until image.digest is set; the digest of a build cannot be known in the chart" -}}
{{- end -}}
{{- if not .clusterScoped -}}
{{- $skips = append $skips "CKV_K8S_21=the namespace is the release namespace, chosen with helm --namespace" -}}
{{- else -}}
{{- $skips = append $skips "CKV_K8S_21=a ClusterServingRuntime has no namespace; its pods run in the namespace of each InferenceService" -}}
{{- end -}}
{{- if and .pod (not .root.Values.networkPolicy.enabled) -}}
{{- $skips = append $skips "CKV2_K8S_6=network policy depends on the cluster's ingress; set networkPolicy.enabled and networkPolicy.from" -}}
{{- end -}}
{{- if .runtime -}}
{{- $skips = append $skips "CKV_K8S_38=a runtime has no automountServiceAccountToken field; the InferenceService of this chart turns the token off" -}}
{{- $skips = append $skips "CKV_K8S_29=a runtime has no pod securityContext field; the container has one and the InferenceService sets the pod-level one" -}}
{{- end -}}
{{- range $i, $s := $skips }}
checkov.io/skip{{ add1 $i }}: {{ $s | quote }}
{{- end }}
{{- end -}}
