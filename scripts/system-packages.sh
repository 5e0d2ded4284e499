#!/usr/bin/env bash
# The Debian packages the test suite starts or drives, installed when missing:
#   postgresql      the registry's tests run against a live server they start themselves
#                   (initdb and pg_ctl in a temporary folder): required
#   chromium        the planner's page end-to-end test (it skips, saying why, without it)
#   fonts-noto-cjk  so the page's Chinese labels render as glyphs in that test
# As root it installs them with apt-get; otherwise through sudo when that needs no password;
# otherwise it names what is missing and how to install it, and fails only for postgresql.
set -uo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fonts=$(fc-list 2>/dev/null || true)  # read whole: grep -q closing the pipe early fails it
grep -q "Noto Sans CJK" <<<"$fonts" || missing+=(fonts-noto-cjk)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "system packages missing: ${missing[*]}; install them with:" >&2
  echo "  sudo apt-get install ${missing[*]}" >&2
  case " ${missing[*]} " in *" postgresql "*) exit 1 ;; esac
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system packages missing: ${missing[*]} (no apt-get here: install them by hand)" >&2
  case " ${missing[*]} " in *" postgresql "*) exit 1 ;; esac
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q
for pkg in "${missing[@]}"; do
  if ! "${as_root[@]}" apt-get install -y -q "$pkg"; then
    echo "$pkg could not be installed" >&2
    [ "$pkg" = postgresql ] && exit 1
  fi
done
exit 0
