dir="$base/snapshots"
[ -d "$dir" ] || exit 0
find "$dir" -maxdepth 1 -name '*.pgdump' -printf 'snapshot\t%p\t%s\n' | sort
