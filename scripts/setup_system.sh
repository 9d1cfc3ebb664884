#!/usr/bin/env bash
# Install the Debian packages MuJoCo needs for headless (offscreen) rendering.
# Idempotent and non-interactive: only missing packages are installed, and
# `apt-get update` runs only when something has to be installed.
# Usage (as root, or with sudo available): bash scripts/setup_system.sh
# Then render with MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa (worldcache sets these by default). Exported, they
# need worldcache imported before mujoco (worldcache/__init__.py says why).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# libosmesa6: software OpenGL context (MUJOCO_GL=osmesa, no display or GPU needed).
# libgl1/libglfw3: lets MUJOCO_GL=glfw/egl work too where a display or GPU exists.
PACKAGES=(libosmesa6 libgl1 libglfw3)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg -s "$pkg" >/dev/null 2>&1 || \
     ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup_system: all packages present (${PACKAGES[*]})"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup_system: installing ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup_system: done"
