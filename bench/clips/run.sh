#!/bin/sh
# Runs a benchmark in CLIPS 6.30 (`apt-get install clips`) the way the CLIPS
# distribution does: depth strategy, (reset), (load-facts FILE), (run), with
# (watch statistics) printing "N rules fired".
#
#   bench/clips/run.sh manners bench-data/manners/manners64.fct [--dump] [--trace]
#   bench/clips/run.sh waltz   bench-data/waltz/waltz50.fct     [--dump] [--trace]
#
# --trace also prints every firing (`(watch rules)`: "FIRE n rule: f-1,f-2").
# --dump also prints the result: for manners the seating (seat and name of each
# guest, via the program's own printout), for waltz every edge as
# "edge P1 P2 LABEL" sorted, so it can be compared with the Stoa run.
set -eu
prog=$1
facts=$(realpath "$2")
dump=
trace=
for opt in "${3:-}" "${4:-}"; do
  case $opt in
    --dump) dump=--dump ;;
    --trace) trace=1 ;;
    "") ;;
    *) echo "unknown option $opt" >&2; exit 2 ;;
  esac
done
here=$(dirname "$(realpath "$0")")
batch=$(mktemp /tmp/clips-bench.XXXXXX)
trap 'rm -f "$batch"' EXIT
{
  echo '(clear)'
  echo '(unwatch compilations)'
  echo '(set-strategy depth)'
  echo "(load \"$here/$prog.clp\")"
  echo '(reset)'
  # After (reset), which sets globals back to their initial values.
  if [ "$dump" = "--dump" ] && [ "$prog" = manners ]; then
    echo '(bind ?*output* t)'
  fi
  echo "(load-facts \"$facts\")"
  echo '(watch statistics)'
  if [ -n "$trace" ]; then echo '(watch rules)'; fi
  echo '(run)'
  echo '(unwatch statistics)'
  echo '(unwatch rules)'
  if [ "$dump" = "--dump" ] && [ "$prog" = waltz ]; then
    echo '(do-for-all-facts ((?e edge)) TRUE (printout t "edge " ?e:p1 " " ?e:p2 " " ?e:label crlf))'
    echo '(do-for-all-facts ((?j junction)) TRUE (printout t "junction " ?j:base_point " " ?j:type " " ?j:p1 " " ?j:p2 " " ?j:p3 crlf))'
  fi
  echo '(exit)'
} > "$batch"
# stdin from /dev/null: CLIPS loops on EOF otherwise.
clips -f2 "$batch" < /dev/null
