#!/usr/bin/env bash
# One device call's worth of waiting on session_bg.sh: returns after $1 seconds or when it is done,
# and copies what it has produced so far into $OUT (at most 8 files come back).
W=/tmp/vtune-gpu; R=$W/results
end=$(( $(date +%s) + ${1:-540} ))
while [ "$(date +%s)" -lt $end ]; do
  grep -q "ALL DONE" "$R/session.log" 2>/dev/null && break
  sleep 5
done
cat "$R/session.log" 2>/dev/null | grep -v "^\s*$" | tail -25
grep -h "^\[\|^  \|imported" "$R"/landscape-*.out 2>/dev/null | cut -c1-220 | tail -30
mkdir -p "$OUT"
cp "$R/session.log" "$OUT/" 2>/dev/null
cp "$R"/landscape-gpu.csv "$R"/landscape-gpu.json "$OUT/" 2>/dev/null
(cd $W && tar czf "$OUT/gpu-results.tar.gz" --exclude='*/cache/*' results studies/*.db $(find studies landscape logs -maxdepth 4 \
   \( -name server.log -o -name trial.json -o -name '*.md' -o -name '*.png' \) 2>/dev/null) logs 2>/dev/null)
ls -la "$OUT"
