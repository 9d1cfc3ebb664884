# Sourced by the GPU scripts (gpu_train.sh, gpu_check.sh) from the repository root: makes the checkout importable as
# the installed package on a machine whose image has torch but not our other dependencies (the lent device
# machines). Wheels carried in .whl/ go to /tmp/site; envs/, rollouts/, configs/ are linked where the installed
# package has them (worldcache.envs/.rollouts/.configs); the package's version metadata is written beside them.
# Does nothing to an environment where worldcache imports already (a `pip install -e .` machine).
if ! python3 -c "import worldcache, diffusers, zarr" 2>/dev/null; then
  if [[ -d .whl ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  for d in envs rollouts configs; do [[ -e worldcache/$d ]] || ln -s "../$d" "worldcache/$d"; done
  mkdir -p /tmp/site/worldcache-0.0.0.dist-info  # the package reads its version from its metadata
  printf 'Metadata-Version: 2.1\nName: worldcache\nVersion: 0.0.0\n' > /tmp/site/worldcache-0.0.0.dist-info/METADATA
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  if ! python3 -c "import worldcache, diffusers, zarr, gymnasium" 2>/dev/null; then  # say which, not fail later
    python3 -c "import worldcache, diffusers, zarr, gymnasium" 2>&1 | tail -1
    echo "device_env.sh: dependencies missing (is .whl in the call's carry?). For the device's Python 3.12, here:" \
      "pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform" \
      "manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl" \
      "diffusers==0.42.1 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0" \
      "gymnasium==1.4.0 farama-notifications==0.0.6 (what the device image lacked in 2026-12)" >&2
    exit 2
  fi
fi
