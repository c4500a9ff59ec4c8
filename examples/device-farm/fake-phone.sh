#!/bin/sh
# A fake phone for the example farm: `fake-phone.sh COMMAND HANDLE [ARG]`.
# Like a real phone farm it misbehaves now and then:
# - `check` fails about one time in ten (the phone is not answering adb);
# - `restart` brings it back;
# - `preflight` finds storage full about one time in fifty;
# - phone-13 hangs in `login`, silent (after `grace_wait_ms` it is
#   `device_unresponsive`: the task moves on, the phone is offline a while);
# - `screenshot` is slow (0.2-0.7 s) and writes a PNG-named file;
# - `upload` fails about one time in twenty (a `continue` step: recorded only).
# FAKE_PHONE_CALM=1 turns every misbehaviour off.
set -u
cmd=${1:?command}
phone=${2:?handle}
calm=${FAKE_PHONE_CALM:-0}
state=${TMPDIR:-/tmp}/orch-fake-phones
mkdir -p "$state"
roll() { # roll N: true about one time in N
  [ "$calm" = 1 ] && return 1
  [ $(( $(od -An -N2 -tu2 /dev/urandom) % $1 )) -eq 0 ]
}
case "$cmd" in
  check)
    if [ -e "$state/$phone.down" ]; then echo "$phone: device offline" >&2; exit 1; fi
    if roll 10; then touch "$state/$phone.down"; echo "$phone: adb: device not found" >&2; exit 1; fi
    ;;
  restart)
    rm -f "$state/$phone.down"; sleep 0.1
    ;;
  preflight)
    if roll 50; then echo "$phone: storage full" >&2; exit 1; fi
    ;;
  bootstrap)
    echo "bootstrap $phone"
    ;;
  login)
    if [ "$calm" != 1 ] && [ "$phone" = phone-13 ]; then sleep 3600; fi
    echo "logged in on $phone"
    ;;
  screenshot)
    out=${3:?output file}
    if [ "$calm" != 1 ]; then sleep 0.$(( $(od -An -N1 -tu1 /dev/urandom) % 6 + 2 )); fi
    printf 'fake screenshot of %s\n' "$phone" > "$out"
    ;;
  upload)
    if roll 20; then echo "upload: connection reset" >&2; exit 1; fi
    ;;
  *)
    echo "fake-phone.sh: unknown command \`$cmd\`" >&2; exit 2
    ;;
esac
