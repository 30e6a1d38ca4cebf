if pg_open; then
  printf 'database\t%s\n' "$pg_db"
  applied_migrations
else
  printf 'database\t\n'
fi
