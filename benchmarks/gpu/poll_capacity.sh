#!/usr/bin/env bash
# One device call's worth of waiting on capacity_session.sh: returns after $1 seconds or when it is done, and
# copies what it has so far into $OUT (session log, study output, best/eager JSON, VL output, a tarball of records).
W=/tmp/vtune-gpu; R=$W/results
end=$(( $(date +%s) + ${1:-540} ))
while [ "$(date +%s)" -lt $end ]; do
  grep -q "ALL DONE" "$R/session.log" 2>/dev/null && break
  sleep 5
done
grep -v "^\s*$" "$R/session.log" 2>/dev/null | tail -30
tail -5 "$R/study.out" 2>/dev/null
mkdir -p "$OUT"
cp "$R"/session.log "$R"/study.out "$R"/study.err "$R"/best.json "$R"/eager.json "$R"/eager.err "$R"/vl.out "$OUT/" 2>/dev/null
(cd $W && tar czf "$OUT/gpu-capacity.tar.gz" $(find studies configs bench-eager vl-out -maxdepth 5 \( -name '*.db' \
   -o -name server.log -o -name trial.json -o -name '*.md' -o -name '*.png' -o -name '*.csv' -o -name '*.yaml' \
   -o -name '*.flags' -o -name '*.env' -o -name '*.json' -o -name '*.out' -o -name '*.err' -o -name '*.tar.gz' \) \
   -not -path '*/cache/*' 2>/dev/null) 2>/dev/null)
ls -la "$OUT"
