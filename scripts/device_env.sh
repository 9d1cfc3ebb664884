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
fi
