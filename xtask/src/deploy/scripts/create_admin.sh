# Runs `timemanager-backend create-admin` inside the current release's running backend
# container (which has DATABASE_URL), with the password on its stdin from the quoted
# here-document `admin_password`: never an argument, on this machine or in the container.
id=$(containers --filter "label=com.docker.compose.service=backend" --filter status=running | head -n 1)
[ -n "$id" ] || die "no running backend container in compose project $project: deploy first (see \`cargo xtask status\`)"
args=(create-admin --email "$email")
[ -z "$username" ] || args+=(--username "$username")
admin_password | docker exec -i "$id" /app/timemanager-backend "${args[@]}"
