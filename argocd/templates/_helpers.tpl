{{/* Automated sync of every Application: prune what left Git, undo drift, retry with backoff.
Pass a dict with "root" (the top context) and "options" (extra syncOptions). */}}
{{- define "apps.syncPolicy" -}}
syncPolicy:
  automated:
    prune: true
    selfHeal: true
  syncOptions:
    - CreateNamespace=true
    {{- range .options }}
    - {{ . }}
    {{- end }}
  retry:
    {{- toYaml .root.Values.syncRetry | nindent 4 }}
{{- end }}
