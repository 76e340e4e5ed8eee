#!/usr/bin/env bash
# Fetch the General MIDI game soundtracks (real drums) shipped in Debian main, without installing the games.
# Usage: scripts/fetch_debian_midi.sh [TARGET_DIR]   (default data/debian_midi). Idempotent: a package whose
# files are already extracted (TARGET/PKG/.done) is skipped. Needs apt-get (Debian/Ubuntu); no root needed
# for `apt-get download` once the package lists exist (`apt-get update` may need root).
set -euo pipefail
TARGET="${1:-data/debian_midi}"
PACKAGES=(simutrans-data freedoom openttd-openmsx planetblupi-music-midi)
mkdir -p "$TARGET"
TARGET="$(cd "$TARGET" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for pkg in "${PACKAGES[@]}"; do
  if [[ -f "$TARGET/$pkg/.done" ]]; then echo "fetch_debian_midi: $pkg already in $TARGET/$pkg"; continue; fi
  echo "fetch_debian_midi: downloading $pkg"
  if ! (cd "$WORK" && apt-get download "$pkg" >/dev/null 2>&1); then
    apt-get update >/dev/null 2>&1 || true
    (cd "$WORK" && apt-get download "$pkg")
  fi
  rm -rf "$TARGET/$pkg.tmp" && mkdir -p "$TARGET/$pkg.tmp"
  dpkg -x "$WORK/${pkg}"_*.deb "$TARGET/$pkg.tmp"
  rm -f "$WORK/${pkg}"_*.deb
  # keep only what the corpus needs (MIDI files, Doom WADs, licences) to stay small
  find "$TARGET/$pkg.tmp" -type f ! \( -iname '*.mid' -o -iname '*.midi' -o -iname '*.wad' -o -iname 'copyright' \) -delete
  find "$TARGET/$pkg.tmp" -type d -empty -delete
  mkdir -p "$TARGET/$pkg.tmp" && touch "$TARGET/$pkg.tmp/.done"
  rm -rf "$TARGET/$pkg" && mv "$TARGET/$pkg.tmp" "$TARGET/$pkg"
done
echo "fetch_debian_midi: done -> $TARGET"
