# Sourced by the import benchmarks. pg_cpu URL: CPU seconds a local PostgreSQL cluster has
# used so far (the postmaster, its reaped children, its live ones), or nothing if its
# processes cannot be read (a remote server, another user's cluster).
pg_cpu() {
  local dir pm t c
  dir=$(psql -tA "$1" -c 'SHOW data_directory' 2>/dev/null) || return 0
  pm=$(head -1 "$dir/postmaster.pid" 2>/dev/null) || return 0
  t=$(awk '{print $14+$15+$16+$17}' "/proc/$pm/stat" 2>/dev/null) || return 0
  for c in $(pgrep -P "$pm"); do t=$((t + $(awk '{print $14+$15}' "/proc/$c/stat" 2>/dev/null || echo 0))); done
  echo "$t $(getconf CLK_TCK)" | awk '{printf "%.2f", $1 / $2}'
}
