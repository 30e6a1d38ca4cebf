ids=$(containers)
[ -z "$ids" ] || docker inspect --format '{{index .Config.Labels "com.docker.compose.service"}}{{"\t"}}{{.State.Status}}{{"\t"}}{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}{{"\t"}}{{.RestartCount}}{{"\t"}}{{.Config.Image}}' $ids
