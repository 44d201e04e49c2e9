#!/bin/sh
# Times one case in CLIPS 6.30 for `stoa bench engine`; prints
# "N rules fired" (and other statistics), then "STOA-BENCH <seconds>". The timer (CLIPS's `time`) covers
# the same phase as Stoa's: asserting the facts and running to quiescence,
# after the program and data file are loaded.
#
#   bench/clips/time.sh manners FILE.fct | waltz FILE.fct | touch N | insert N
set -eu
here=$(dirname "$(realpath "$0")")
batch=$(mktemp /tmp/clips-time.XXXXXX)
trap 'rm -f "$batch"' EXIT
{
  echo '(clear)'
  echo '(unwatch all)'
  echo '(set-strategy depth)'
  echo '(defglobal ?*t* = 0)'
  case $1 in
    manners|waltz)
      echo "(load \"$here/$1.clp\")"
      echo '(reset)'
      # load-facts parses and asserts together; assert time is inside the
      # timer, as Stoa's start turn asserts its facts inside its timer.
      echo '(bind ?*t* (time))'
      echo "(load-facts \"$(realpath "$2")\")"
      echo '(watch statistics)'
      echo '(run)' ;;
    touch|insert)
      echo "(load \"$here/$1.clp\")"
      echo '(reset)'
      echo '(bind ?*t* (time))'
      echo "(bench-make $2)"
      echo '(watch statistics)'
      echo '(run)' ;;
  esac
  # CLIPS 6.30's (run) returns nothing: the count comes from
  # (watch statistics), "N rules fired", printed before this line.
  echo '(printout t "STOA-BENCH " (- (time) ?*t*) crlf)'
  echo '(exit)'
} > "$batch"
clips -f2 "$batch" < /dev/null
